/* ab_sandbox_read_state(): a dump of everything KVM exposes about a vCPU,
 * for tests and debugging (tests/statedump.py compares two dumps field by
 * field). Deliberately independent of the snapshot code (vcpustate.c): it
 * reads more than restore writes (every MSR KVM lists, the FPU view) so
 * that state the snapshot forgot shows up as a difference.
 *
 * It runs its ioctls on the calling thread. KVM serialises vCPU ioctls,
 * and with no command in flight the vCPU thread is idle, so this only
 * reads; it must not be used while a command runs (-EBUSY).
 */
#include "internal.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>

/* The public mirrors must equal KVM's structures byte for byte: the same
 * size, and every field at the same offset. */
#define SAME_SIZE(a, b) _Static_assert(sizeof(a) == sizeof(b), #a " != " #b)
#define SAME_FIELD(a, b, f)                                                   \
    _Static_assert(offsetof(a, f) == offsetof(b, f) &&                        \
                       sizeof(((a *)0)->f) == sizeof(((b *)0)->f),            \
                   #a "." #f)

SAME_SIZE(struct ab_kvm_regs, struct kvm_regs);
SAME_FIELD(struct ab_kvm_regs, struct kvm_regs, rax);
SAME_FIELD(struct ab_kvm_regs, struct kvm_regs, r8);
SAME_FIELD(struct ab_kvm_regs, struct kvm_regs, r15);
SAME_FIELD(struct ab_kvm_regs, struct kvm_regs, rip);
SAME_FIELD(struct ab_kvm_regs, struct kvm_regs, rflags);

SAME_SIZE(struct ab_kvm_segment, struct kvm_segment);
SAME_FIELD(struct ab_kvm_segment, struct kvm_segment, base);
SAME_FIELD(struct ab_kvm_segment, struct kvm_segment, limit);
SAME_FIELD(struct ab_kvm_segment, struct kvm_segment, selector);
SAME_FIELD(struct ab_kvm_segment, struct kvm_segment, type);
SAME_FIELD(struct ab_kvm_segment, struct kvm_segment, avl);
SAME_FIELD(struct ab_kvm_segment, struct kvm_segment, unusable);
SAME_FIELD(struct ab_kvm_segment, struct kvm_segment, padding);
SAME_SIZE(struct ab_kvm_dtable, struct kvm_dtable);
SAME_FIELD(struct ab_kvm_dtable, struct kvm_dtable, limit);
SAME_FIELD(struct ab_kvm_dtable, struct kvm_dtable, padding);
SAME_SIZE(struct ab_kvm_sregs, struct kvm_sregs);
SAME_FIELD(struct ab_kvm_sregs, struct kvm_sregs, ldt);
SAME_FIELD(struct ab_kvm_sregs, struct kvm_sregs, gdt);
SAME_FIELD(struct ab_kvm_sregs, struct kvm_sregs, idt);
SAME_FIELD(struct ab_kvm_sregs, struct kvm_sregs, cr0);
SAME_FIELD(struct ab_kvm_sregs, struct kvm_sregs, apic_base);
SAME_FIELD(struct ab_kvm_sregs, struct kvm_sregs, interrupt_bitmap);

SAME_SIZE(struct ab_kvm_fpu, struct kvm_fpu);
SAME_FIELD(struct ab_kvm_fpu, struct kvm_fpu, fcw);
SAME_FIELD(struct ab_kvm_fpu, struct kvm_fpu, ftwx);
SAME_FIELD(struct ab_kvm_fpu, struct kvm_fpu, last_opcode);
SAME_FIELD(struct ab_kvm_fpu, struct kvm_fpu, last_ip);
SAME_FIELD(struct ab_kvm_fpu, struct kvm_fpu, last_dp);
SAME_FIELD(struct ab_kvm_fpu, struct kvm_fpu, xmm);
SAME_FIELD(struct ab_kvm_fpu, struct kvm_fpu, mxcsr);
SAME_FIELD(struct ab_kvm_fpu, struct kvm_fpu, pad2);

SAME_SIZE(struct ab_kvm_vcpu_events, struct kvm_vcpu_events);
SAME_FIELD(struct ab_kvm_vcpu_events, struct kvm_vcpu_events, exception);
SAME_FIELD(struct ab_kvm_vcpu_events, struct kvm_vcpu_events, interrupt);
SAME_FIELD(struct ab_kvm_vcpu_events, struct kvm_vcpu_events, nmi);
SAME_FIELD(struct ab_kvm_vcpu_events, struct kvm_vcpu_events, sipi_vector);
SAME_FIELD(struct ab_kvm_vcpu_events, struct kvm_vcpu_events, flags);
SAME_FIELD(struct ab_kvm_vcpu_events, struct kvm_vcpu_events, smi);
SAME_FIELD(struct ab_kvm_vcpu_events, struct kvm_vcpu_events, triple_fault);
SAME_FIELD(struct ab_kvm_vcpu_events, struct kvm_vcpu_events, reserved);
SAME_FIELD(struct ab_kvm_vcpu_events, struct kvm_vcpu_events,
           exception_has_payload);
SAME_FIELD(struct ab_kvm_vcpu_events, struct kvm_vcpu_events,
           exception_payload);

SAME_SIZE(struct ab_kvm_debugregs, struct kvm_debugregs);
SAME_FIELD(struct ab_kvm_debugregs, struct kvm_debugregs, dr6);
SAME_FIELD(struct ab_kvm_debugregs, struct kvm_debugregs, flags);
SAME_FIELD(struct ab_kvm_debugregs, struct kvm_debugregs, reserved);

SAME_SIZE(struct ab_kvm_xcr, struct kvm_xcr);
SAME_FIELD(struct ab_kvm_xcr, struct kvm_xcr, value);
SAME_SIZE(struct ab_kvm_xcrs, struct kvm_xcrs);
SAME_FIELD(struct ab_kvm_xcrs, struct kvm_xcrs, xcrs);
SAME_FIELD(struct ab_kvm_xcrs, struct kvm_xcrs, padding);

/* Architectural MSRs KVM answers although KVM_GET_MSR_INDEX_LIST omits
 * them (it saves them elsewhere, or its vCPU model lacks the feature). */
static const uint32_t extra_msrs[] = {
    0xc0000080, /* EFER    */
    0xc0000100, /* FS_BASE */
    0xc0000101, /* GS_BASE */
    0xc0000103, /* TSC_AUX */
};

/* Read every MSR in out->msrs[0..n). KVM_GET_MSRS stops at the first MSR
 * it refuses and returns how many it read: mark that one and go on. */
static int read_msrs(int fd, struct ab_vcpu_state *out)
{
    uint32_t n = out->nmsrs;
    struct kvm_msrs *req =
        calloc(1, sizeof *req + n * sizeof(struct kvm_msr_entry));
    if (!req)
        return -ENOMEM;
    for (uint32_t i = 0; i < n;) {
        req->nmsrs = n - i;
        for (uint32_t j = i; j < n; j++)
            req->entries[j - i] =
                (struct kvm_msr_entry){.index = out->msrs[j].index};
        int rc = ioctl(fd, KVM_GET_MSRS, req);
        if (rc < 0) {
            int err = errno;
            free(req);
            return -err;
        }
        for (int j = 0; j < rc; j++) {
            out->msrs[i + (uint32_t)j].ok = 1;
            out->msrs[i + (uint32_t)j].value = req->entries[j].data;
        }
        i += (uint32_t)rc;
        if (i < n)
            i++; /* refused: ok stays 0 */
    }
    free(req);
    return 0;
}

int ab_sandbox_read_state(ab_sandbox *sb, struct ab_vcpu_state *out,
                          uint8_t *xsave, size_t xsave_len)
{
    if (atomic_load(&sb->pending))
        return -EBUSY;
    if (!sb->run || sb->vcpu_fd < 0)
        return -ENODEV;
    if (xsave_len < sb->xsave_size)
        return -ENOSPC;
    memset(out, 0, sizeof *out);
    memset(xsave, 0, xsave_len);
    int fd = sb->vcpu_fd;
    struct kvm_regs regs;
    struct kvm_sregs sregs;
    struct kvm_fpu fpu;
    struct kvm_vcpu_events events;
    struct kvm_debugregs debugregs;
    struct kvm_xcrs xcrs;
    struct kvm_mp_state mp;
    if (ioctl(fd, KVM_GET_REGS, &regs) < 0 ||
        ioctl(fd, KVM_GET_SREGS, &sregs) < 0 ||
        ioctl(fd, KVM_GET_FPU, &fpu) < 0 ||
        ioctl(fd, KVM_GET_VCPU_EVENTS, &events) < 0 ||
        ioctl(fd, KVM_GET_DEBUGREGS, &debugregs) < 0 ||
        ioctl(fd, KVM_GET_XCRS, &xcrs) < 0 ||
        ioctl(fd, KVM_GET_MP_STATE, &mp) < 0 ||
        ioctl(fd, kvm_have_xsave2() ? KVM_GET_XSAVE2 : KVM_GET_XSAVE, xsave) <
            0)
        return -errno;
    memcpy(&out->regs, &regs, sizeof regs);
    memcpy(&out->sregs, &sregs, sizeof sregs);
    memcpy(&out->fpu, &fpu, sizeof fpu);
    memcpy(&out->events, &events, sizeof events);
    memcpy(&out->debugregs, &debugregs, sizeof debugregs);
    memcpy(&out->xcrs, &xcrs, sizeof xcrs);
    out->mp_state = mp.mp_state;

    uint32_t nlisted;
    const uint32_t *listed = kvm_msr_index_list(&nlisted);
    uint32_t n = 0;
    for (uint32_t i = 0; i < nlisted && n < AB_MAX_MSRS; i++)
        out->msrs[n++].index = listed[i];
    for (size_t e = 0; e < sizeof extra_msrs / sizeof *extra_msrs; e++) {
        bool seen = false;
        for (uint32_t i = 0; i < n; i++)
            seen |= out->msrs[i].index == extra_msrs[e];
        if (!seen && n < AB_MAX_MSRS)
            out->msrs[n++].index = extra_msrs[e];
    }
    out->nmsrs = n;
    return read_msrs(fd, out);
}

size_t ab_sandbox_xsave_size(ab_sandbox *sb) { return sb->xsave_size; }
