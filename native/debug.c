/* Pausing the guest for a debugger, and the register and memory access a
 * debugger needs (docs/debugging.md).
 *
 * kvm_pvm here does not intercept CPL3 debug exceptions for the host:
 * KVM_SET_GUEST_DEBUG is accepted, but with KVM_GUESTDBG_USE_SW_BP an
 * int3 at CPL3 still goes through the guest's IDT, KVM_GUESTDBG_SINGLESTEP
 * sets RFLAGS.TF and the #DB goes through the guest's IDT as well (only the
 * emulated CPL0 instructions exit with KVM_EXIT_DEBUG), and
 * KVM_CAP_GUEST_DEBUG_HW_BPS is 0 (the guest's own DR0-3/DR7 are not
 * honoured either). So KVM_SET_GUEST_DEBUG is never used. Breakpoints are
 * int3 bytes the host writes into guest code, single steps are RFLAGS.TF,
 * and both arrive like any exception: through the CPL0 stub and `out
 * AB_PORT_FAULT`. The stubs keep every general register but rsp (see
 * memory.c), so with the exception frame the host has the complete CPL3
 * state, and debug_trap() puts the vCPU back into it.
 *
 * With debugging off (the default) nothing here is reachable from the
 * guest: decode_fault() calls debug_trap() only if debug_enabled, which
 * is set before the vCPU first runs; #BP and #DB stay faults.
 */
#include "internal.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>

#define KSTACK_TOP (AB_KSTACK_ADDR + AB_KSTACK_PAGES * AB_PAGE_SIZE)
#define FRAME_WORDS 7 /* vector, error code, rip, cs, rflags, rsp, ss */
#define VECTOR_DB 1
#define VECTOR_BP 3
#define SEL_UDATA_RPL3 0x1b
#define SEL_UCODE_RPL3 0x23

int ab_sandbox_enable_debug(ab_sandbox *sb)
{
    if (sb->started)
        return -EALREADY;
    /* Read by the vCPU thread after it sees the CREATE command, which
     * ab_sandbox_start() stores with seq_cst after this. */
    sb->debug_enabled = true;
    return 0;
}

void debug_report_interrupt(struct ab_sandbox *sb, struct ab_event *ev)
{
    struct kvm_regs r;
    ev->kind = AB_EV_DEBUG_STOP;
    ev->vector = AB_STOP_INTERRUPT;
    ev->rip = ioctl(sb->vcpu_fd, KVM_GET_REGS, &r) == 0 ? r.rip : 0;
}

/* Complete the pending `out` of the stub (KVM finishes an exit only on the
 * next KVM_RUN; snapshot.c explains) so the registers may be overwritten:
 * KVM_RUN with immediate_exit returns EINTR without entering the guest. */
static int settle_once(struct ab_sandbox *sb)
{
    _Atomic uint8_t *immediate_exit =
        (_Atomic uint8_t *)&sb->run->immediate_exit;
    atomic_store(immediate_exit, 1);
    int rc = ioctl(sb->vcpu_fd, KVM_RUN, 0);
    int err = errno;
    atomic_store(immediate_exit, 0);
    if (rc == 0)
        return -EIO; /* another exit: the stub's `hlt` cannot be reached */
    return err == EINTR ? 0 : -err;
}

bool debug_trap(struct ab_sandbox *sb, struct ab_event *ev,
                const uint64_t frame[7])
{
    uint64_t vector = frame[0];
    if (vector != VECTOR_DB && vector != VECTOR_BP)
        return false;
    /* Only a trap from CPL3 is the guest's: the stubs never trap. */
    if ((frame[3] & 3) != 3 || (frame[6] & 3) != 3)
        return false;
    struct kvm_regs r;
    struct kvm_sregs sr;
    int rc = settle_once(sb);
    if (rc == 0 && (ioctl(sb->vcpu_fd, KVM_GET_REGS, &r) < 0 ||
                    ioctl(sb->vcpu_fd, KVM_GET_SREGS, &sr) < 0))
        rc = -errno;
    if (rc == 0) {
        /* Back to CPL3 where the trap left it, as iretq would: rip, rsp,
         * rflags from the frame; cs and ss the user descriptors vm.c set
         * (in 64-bit mode the CPU loaded a null ss for CPL0). */
        r.rip = frame[2];
        r.rflags = frame[4];
        r.rsp = frame[5];
        sr.cs.selector = SEL_UCODE_RPL3;
        sr.cs.dpl = 3;
        sr.ss = sr.ds; /* ds is never touched by the stubs: the user data */
        sr.ss.selector = SEL_UDATA_RPL3;
        if (ioctl(sb->vcpu_fd, KVM_SET_SREGS, &sr) < 0 ||
            ioctl(sb->vcpu_fd, KVM_SET_REGS, &r) < 0)
            rc = -errno;
    }
    memset(ev, 0, offsetof(struct ab_event, message));
    if (rc < 0) {
        ev->kind = AB_EV_VM_ERROR;
        ev->error = rc;
        ev->exit_reason = KVM_EXIT_IO;
        strcpy(ev->message, "resuming from a debug trap failed");
        return true;
    }
    ev->kind = AB_EV_DEBUG_STOP;
    ev->vector = vector == VECTOR_BP ? AB_STOP_BREAKPOINT : AB_STOP_STEP;
    ev->rip = frame[2];
    return true;
}

/* ---- idle-time access from Python -------------------------------------------- */

static int check_idle(struct ab_sandbox *sb)
{
    if (atomic_load(&sb->pending))
        return -EBUSY;
    if (!sb->run || sb->vcpu_fd < 0)
        return -ENODEV;
    return 0;
}

int ab_sandbox_guest_regs(ab_sandbox *sb, struct ab_kvm_regs *regs,
                          struct ab_kvm_sregs *sregs, int *in_stub)
{
    int rc = check_idle(sb);
    if (rc)
        return rc;
    struct kvm_regs r;
    struct kvm_sregs sr;
    if (ioctl(sb->vcpu_fd, KVM_GET_REGS, &r) < 0 ||
        ioctl(sb->vcpu_fd, KVM_GET_SREGS, &sr) < 0)
        return -errno;
    *in_stub = 0;
    if ((sr.cs.selector & 3) == 0 && r.rsp >= AB_KSTACK_ADDR &&
        r.rsp <= KSTACK_TOP - FRAME_WORDS * 8 && !(r.rsp & 7)) {
        /* Stopped in a CPL0 stub (after a fault): the guest's own rip,
         * rsp, rflags, cs and ss are in the frame. */
        uint64_t frame[FRAME_WORDS];
        memcpy(frame, sb->mem + r.rsp, sizeof frame);
        r.rip = frame[2];
        sr.cs.selector = (uint16_t)frame[3];
        r.rflags = frame[4];
        r.rsp = frame[5];
        sr.ss.selector = (uint16_t)frame[6];
        *in_stub = 1;
    }
    memcpy(regs, &r, sizeof r);
    memcpy(sregs, &sr, sizeof sr);
    return 0;
}

int ab_sandbox_set_guest_regs(ab_sandbox *sb, const struct ab_kvm_regs *regs)
{
    int rc = check_idle(sb);
    if (rc)
        return rc;
    if (!sb->at_debug_stop)
        return -EPERM;
    struct kvm_regs r;
    memcpy(&r, regs, sizeof r);
    return ioctl(sb->vcpu_fd, KVM_SET_REGS, &r) < 0 ? -errno : 0;
}

int ab_sandbox_guest_fxsave(ab_sandbox *sb, uint8_t out[512])
{
    int rc = check_idle(sb);
    if (rc)
        return rc;
    /* The legacy region is the first 512 bytes of either format;
     * KVM_GET_XSAVE2 wants xsave_size bytes (at least 4 KiB). */
    uint8_t *buf = calloc(1, sb->xsave_size);
    if (!buf)
        return -ENOMEM;
    unsigned long req = kvm_have_xsave2() ? KVM_GET_XSAVE2 : KVM_GET_XSAVE;
    rc = ioctl(sb->vcpu_fd, req, buf) < 0 ? -errno : 0;
    if (rc == 0)
        memcpy(out, buf, 512);
    free(buf);
    return rc;
}

static void mark_pages(uint64_t *map, uint64_t addr, uint64_t len)
{
    if (!map || !len)
        return;
    for (uint64_t p = addr / AB_PAGE_SIZE; p <= (addr + len - 1) / AB_PAGE_SIZE;
         p++)
        map[p / 64] |= 1ull << (p % 64);
}

int ab_sandbox_debug_write(ab_sandbox *sb, uint64_t gpa, const uint8_t *data,
                           size_t len)
{
    if (atomic_load(&sb->pending))
        return -EBUSY;
    if (!sb->mem)
        return -ENODEV;
    if (gpa > sb->layout.memory_size || len > sb->layout.memory_size - gpa)
        return -EFAULT;
    memcpy(sb->mem + gpa, data, len);
    /* KVM's dirty log does not see host writes: tell the snapshot code
     * (snapshot.c) as it tracks its own writes. */
    mark_pages(sb->written, gpa, len);
    mark_pages(sb->dirty, gpa, len);
    return 0;
}
