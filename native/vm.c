/* The KVM objects of one sandbox: VM, memory slot and vCPU, and the vCPU's
 * initial register state (long mode, entering the guest at CPL3). Runs on
 * the sandbox's vCPU thread so the event loop never waits for it. */
#include "internal.h"

#include <errno.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/mman.h>
#include <unistd.h>

#define CR0_PE (1ull << 0)
#define CR0_MP (1ull << 1)
#define CR0_ET (1ull << 4)
#define CR0_NE (1ull << 5)
#define CR0_WP (1ull << 16)
#define CR0_PG (1ull << 31)
#define CR4_PAE (1ull << 5)
#define CR4_OSFXSR (1ull << 9)
#define CR4_OSXMMEXCPT (1ull << 10)
#define CR4_FSGSBASE (1ull << 16)
#define EFER_LME (1ull << 8)
#define EFER_LMA (1ull << 10)
#define EFER_NXE (1ull << 11)

#define SEL_UDATA_RPL3 0x1b
#define SEL_UCODE_RPL3 0x23
#define SEL_TSS 0x28

#define IOCTL_FAIL(what)                                                      \
    ab_fail(errbuf, errlen, errno, "%s failed: %s", what, strerror(errno))

/* Fault injection (ab_sandbox_inject_create_failure): true, with errno set
 * as the failing ioctl would, if `step` is to fail. */
static bool injected(const struct ab_sandbox *sb, int step)
{
    if (sb->inject_create_failure != step)
        return false;
    errno = EIO;
    return true;
}

static void set_segments(struct kvm_sregs *s)
{
    struct kvm_segment code = {
        .base = 0, .limit = 0xffffffff, .selector = SEL_UCODE_RPL3,
        .type = 11, .present = 1, .dpl = 3, .db = 0, .s = 1, .l = 1, .g = 1,
    };
    struct kvm_segment data = code;
    data.selector = SEL_UDATA_RPL3;
    data.type = 3;
    data.l = 0;
    data.db = 1;
    s->cs = code;
    s->ds = s->es = s->fs = s->gs = s->ss = data;
    struct kvm_segment tr = {
        .base = AB_TSS_ADDR, .limit = 104 + 8192, .selector = SEL_TSS,
        .type = 11, .present = 1, .s = 0,
    };
    s->tr = tr;
    s->gdt.base = AB_GDT_ADDR;
    s->gdt.limit = 7 * 8 - 1;
    s->idt.base = AB_IDT_ADDR;
    s->idt.limit = 32 * 16 - 1;
}

static int set_initial_registers(struct ab_sandbox *sb, char *errbuf,
                                 size_t errlen)
{
    struct kvm_sregs s;
    if (ioctl(sb->vcpu_fd, KVM_GET_SREGS, &s) < 0)
        return IOCTL_FAIL("KVM_GET_SREGS");
    s.cr0 = CR0_PE | CR0_MP | CR0_ET | CR0_NE | CR0_WP | CR0_PG;
    s.cr3 = AB_PML4_ADDR;
    s.cr4 = CR4_PAE | CR4_OSFXSR | CR4_OSXMMEXCPT;
    /* rd/wr{fs,gs}base at CPL3: the guest's libc sets its thread pointer
     * without a system request. memory.c says so in the boot info
     * (AB_BOOT_FSGSBASE); both read the same process-wide CPUID. */
    if (kvm_have_fsgsbase())
        s.cr4 |= CR4_FSGSBASE;
    s.efer = EFER_LME | EFER_LMA | EFER_NXE;
    set_segments(&s);
    if (ioctl(sb->vcpu_fd, KVM_SET_SREGS, &s) < 0)
        return IOCTL_FAIL("KVM_SET_SREGS");

    struct kvm_regs r;
    memset(&r, 0, sizeof r);
    r.rip = sb->layout.entry;
    r.rsp = sb->layout.stack_addr + sb->layout.stack_size;
    r.rdi = AB_BOOT_INFO_ADDR;
    r.rflags = 0x2; /* IF=0, IOPL=0: port I/O only through the TSS bitmap */
    if (injected(sb, AB_CREATE_FAIL_REGISTERS) ||
        ioctl(sb->vcpu_fd, KVM_SET_REGS, &r) < 0)
        return IOCTL_FAIL("KVM_SET_REGS");
    return 0;
}

/* Every step of vm_create() but the last; on failure it may leave some of
 * them done, for vm_create() to undo. */
static int vm_build(struct ab_sandbox *sb, char *errbuf, size_t errlen)
{
    int kvm = kvm_fd(errbuf, errlen);
    if (kvm < 0)
        return kvm;
    sb->vm_fd = ioctl(kvm, KVM_CREATE_VM, 0);
    if (sb->vm_fd < 0)
        return IOCTL_FAIL("KVM_CREATE_VM");
    /* Dirty-page logging lets restore copy back only what changed. */
    struct kvm_userspace_memory_region region = {
        .slot = 0,
        .flags = sb->dirty_log ? KVM_MEM_LOG_DIRTY_PAGES : 0,
        .guest_phys_addr = 0,
        .memory_size = sb->layout.memory_size,
        .userspace_addr = (uint64_t)(uintptr_t)sb->mem,
    };
    if (ioctl(sb->vm_fd, KVM_SET_USER_MEMORY_REGION, &region) < 0)
        return IOCTL_FAIL("KVM_SET_USER_MEMORY_REGION");
    sb->vcpu_fd = ioctl(sb->vm_fd, KVM_CREATE_VCPU, 0);
    if (sb->vcpu_fd < 0)
        return IOCTL_FAIL("KVM_CREATE_VCPU");
    /* [N2] Only the kick signal interrupts KVM_RUN (signal.c). */
    int mask_rc = kick_signal_unblock_in_run(sb->vcpu_fd, sb->ih->signo);
    if (mask_rc) {
        errno = -mask_rc;
        return IOCTL_FAIL("KVM_SET_SIGNAL_MASK");
    }
    sb->run_size = kvm_vcpu_mmap_size();
    void *run = mmap(NULL, (size_t)sb->run_size, PROT_READ | PROT_WRITE,
                     MAP_SHARED, sb->vcpu_fd, 0);
    if (run == MAP_FAILED)
        return ab_fail(errbuf, errlen, errno, "mmap of kvm_run failed: %s",
                       strerror(errno));
    sb->run = run;
    if (injected(sb, AB_CREATE_FAIL_CPUID) ||
        ioctl(sb->vcpu_fd, KVM_SET_CPUID2, kvm_supported_cpuid()) < 0)
        return IOCTL_FAIL("KVM_SET_CPUID2");
    /* The guest reads its clocks from its TSC between anchors
     * (AB_SYS_CLOCK_ANCHOR) when it knows the TSC's rate; 0 turns that off. */
    int khz = ioctl(sb->vcpu_fd, KVM_GET_TSC_KHZ, 0);
    struct ab_boot_info *bi = (struct ab_boot_info *)(sb->mem + AB_BOOT_INFO_ADDR);
    uint64_t tsc_khz = khz > 0 ? (uint64_t)khz : 0;
    /* Written only if it differs: a spawned sandbox's boot info page then
     * stays shared with its snapshot (backing.c). */
    if (bi->tsc_khz != tsc_khz)
        bi->tsc_khz = tsc_khz;
    /* The XSAVE buffer size, asked of the VM as the KVM API says (it may
     * exceed 4 KiB with dynamically enabled components); 0 without
     * KVM_CAP_XSAVE2, where the legacy 4 KiB buffer holds everything. */
    int xsave_size = ioctl(sb->vm_fd, KVM_CHECK_EXTENSION, KVM_CAP_XSAVE2);
    sb->xsave_size = xsave_size > (int)sizeof(struct kvm_xsave)
                         ? (uint32_t)xsave_size
                         : (uint32_t)sizeof(struct kvm_xsave);
    /* A spawned sandbox's registers come from its snapshot (spawn.c). */
    int rc = sb->spawn_from ? 0 : set_initial_registers(sb, errbuf, errlen);
    if (rc)
        return rc;
    if (injected(sb, AB_CREATE_FAIL_END))
        return ab_fail(errbuf, errlen, errno, "VM creation failed at its "
                       "last step (injected)");
    return 0;
}

/* Create the VM, its memory slot and the vCPU, map kvm_run and set the
 * initial registers. All or nothing:
 *
 *  - on success the vCPU is fully initialised, and only then is kvm_run
 *    handed to the interrupt handle (ih->run): from that point kicks may
 *    set immediate_exit, so a running vCPU can always be stopped;
 *  - on failure every step taken is undone (kvm_run unmapped, vCPU and VM
 *    closed): sb->run == NULL and both fds are -1, exactly as before the
 *    call. The vCPU thread refuses to run without sb->run (vcpu.c), so no
 *    call can enter KVM_RUN on a half-initialised vCPU, which no kick could
 *    reach because ih->run was never set.
 *
 * There is no state in between: "kvm_run mapped" implies "vCPU usable and
 * kickable". */
int vm_create(struct ab_sandbox *sb, char *errbuf, size_t errlen)
{
    int rc = vm_build(sb, errbuf, errlen);
    if (rc) {
        vm_destroy(sb);
        return rc;
    }
    /* Kicks may touch kvm_run from now on (still under kick_lock). */
    pthread_mutex_lock(&sb->ih->kick_lock);
    sb->ih->run = sb->run;
    pthread_mutex_unlock(&sb->ih->kick_lock);
    return 0;
}

/* Undo vm_create(), or whatever part of it was done. Idempotent. Callers
 * make sure no kick can touch kvm_run any more (interrupt_set_dropped())
 * unless it was never handed to the interrupt handle. */
void vm_destroy(struct ab_sandbox *sb)
{
    /* No kick may touch kvm_run once it is unmapped (teardown has already
     * done this through interrupt_set_dropped; restore's rebuild has not). */
    if (sb->ih) {
        pthread_mutex_lock(&sb->ih->kick_lock);
        sb->ih->run = NULL;
        pthread_mutex_unlock(&sb->ih->kick_lock);
    }
    if (sb->run)
        munmap(sb->run, (size_t)sb->run_size);
    if (sb->vcpu_fd >= 0)
        close(sb->vcpu_fd);
    if (sb->vm_fd >= 0)
        close(sb->vm_fd);
    sb->run = NULL;
    sb->vcpu_fd = sb->vm_fd = -1;
}

int vm_rebuild(struct ab_sandbox *sb, char *errbuf, size_t errlen)
{
    /* Kicks cannot reach the old kvm_run once vm_destroy() has detached it
     * (under kick_lock); vm_create() attaches the new one the same way. A
     * kick in between finds no kvm_run and nothing RUNNING: restore never
     * enters the guest. */
    uint32_t xsave_size = sb->xsave_size;
    vm_destroy(sb);
    int rc = vm_create(sb, errbuf, errlen);
    if (rc == 0 && sb->xsave_size != xsave_size) /* not on one KVM */
        rc = ab_fail(errbuf, errlen, EIO, "the rebuilt vCPU's XSAVE size "
                     "changed from %u to %u", xsave_size, sb->xsave_size);
    if (rc)
        vm_destroy(sb); /* leave no half-built VM: later commands see none */
    return rc;
}
