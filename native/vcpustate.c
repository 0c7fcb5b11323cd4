/* The vCPU state a snapshot holds (struct vcpu_state, internal.h), read
 * and written with KVM's ioctls. Both run on the vCPU thread, after the
 * vCPU has settled (snapshot.c).
 *
 * The XSAVE area is the guest's view of x87/SSE/AVX/AVX-512 state (what
 * XRSTOR loads on entry). KVM_GET_FPU is a raw view of the legacy part of
 * KVM's buffer: for a component in its init state (its xstate_bv bit
 * clear) XRSTOR ignores the buffer, and KVM_SET_XSAVE leaves whatever an
 * earlier user left there, which KVM_GET_FPU still shows. So the FPU view
 * is saved and written back too, after the XSAVE area: then nothing KVM
 * reports differs from the snapshot, not even bytes the guest cannot load.
 * (KVM_GET_FPU does not carry MXCSR here; the XSAVE area does.)
 */
#include "internal.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>

int vcpu_state_alloc(struct vcpu_state *st, uint32_t xsave_size)
{
    memset(st, 0, sizeof *st);
    if (xsave_size < sizeof(struct kvm_xsave))
        return -EINVAL;
    st->xsave = calloc(1, xsave_size);
    if (!st->xsave)
        return -ENOMEM;
    st->xsave_size = xsave_size;
    return 0;
}

void vcpu_state_free(struct vcpu_state *st)
{
    free(st->xsave);
    st->xsave = NULL;
}

#define CHECK(call, name)                                                     \
    do {                                                                      \
        if ((call) < 0) {                                                     \
            *what = name;                                                     \
            return -errno;                                                    \
        }                                                                     \
    } while (0)

int vcpu_state_get(struct ab_sandbox *sb, struct vcpu_state *st,
                   const char **what)
{
    int fd = sb->vcpu_fd;
    CHECK(ioctl(fd, KVM_GET_REGS, &st->regs), "KVM_GET_REGS");
    CHECK(ioctl(fd, KVM_GET_SREGS, &st->sregs), "KVM_GET_SREGS");
    if (kvm_have_xsave2())
        CHECK(ioctl(fd, KVM_GET_XSAVE2, st->xsave), "KVM_GET_XSAVE2");
    else
        CHECK(ioctl(fd, KVM_GET_XSAVE, st->xsave), "KVM_GET_XSAVE");
    CHECK(ioctl(fd, KVM_GET_FPU, &st->fpu), "KVM_GET_FPU");
    CHECK(ioctl(fd, KVM_GET_XCRS, &st->xcrs), "KVM_GET_XCRS");
    CHECK(ioctl(fd, KVM_GET_DEBUGREGS, &st->debugregs), "KVM_GET_DEBUGREGS");
    CHECK(ioctl(fd, KVM_GET_VCPU_EVENTS, &st->events), "KVM_GET_VCPU_EVENTS");
    CHECK(ioctl(fd, KVM_GET_MP_STATE, &st->mp_state), "KVM_GET_MP_STATE");
    uint32_t n;
    const uint32_t *indices = kvm_restore_msrs(&n);
    memset(&st->msrs, 0, sizeof st->msrs);
    st->msrs.header.nmsrs = n;
    for (uint32_t i = 0; i < n; i++)
        st->msrs.entries[i].index = indices[i];
    int rc = ioctl(fd, KVM_GET_MSRS, &st->msrs);
    CHECK(rc, "KVM_GET_MSRS");
    if ((uint32_t)rc != n) { /* KVM listed it, so it must read it */
        *what = "KVM_GET_MSRS";
        return -EIO;
    }
    return 0;
}

/* Write the general and segment registers and the pending events. With
 * KVM_CAP_SYNC_REGS they travel in kvm_run and one KVM_RUN with
 * immediate_exit applies them (KVM does so before it looks at
 * immediate_exit, and the vCPU has settled, so nothing else happens): one
 * ioctl instead of three, about 10 us less per restore on nested KVM.
 * KVM applies them in the order regs, sregs, events. */
static int set_regs_sregs_events(struct ab_sandbox *sb,
                                 const struct vcpu_state *st,
                                 const char **what)
{
    int fd = sb->vcpu_fd;
    if (!kvm_have_sync_regs()) {
        CHECK(ioctl(fd, KVM_SET_REGS, &st->regs), "KVM_SET_REGS");
        CHECK(ioctl(fd, KVM_SET_SREGS, &st->sregs), "KVM_SET_SREGS");
        CHECK(ioctl(fd, KVM_SET_VCPU_EVENTS, &st->events),
              "KVM_SET_VCPU_EVENTS");
        return 0;
    }
    struct kvm_run *run = sb->run;
    run->s.regs.regs = st->regs;
    run->s.regs.sregs = st->sregs;
    run->s.regs.events = st->events;
    run->kvm_dirty_regs =
        KVM_SYNC_X86_REGS | KVM_SYNC_X86_SREGS | KVM_SYNC_X86_EVENTS;
    _Atomic uint8_t *immediate_exit = (_Atomic uint8_t *)&run->immediate_exit;
    atomic_store(immediate_exit, 1);
    int rc = ioctl(fd, KVM_RUN, 0);
    int err = errno;
    atomic_store(immediate_exit, 0);
    /* KVM clears each bit it applied; a failed sync leaves them set, and
     * they must not linger into the next call's KVM_RUN. */
    bool applied = run->kvm_dirty_regs == 0;
    run->kvm_dirty_regs = 0;
    if (rc == 0 || err != EINTR || !applied) {
        *what = "KVM_RUN with kvm_run.s.regs";
        return rc == 0 || err == EINTR ? -EIO : -err;
    }
    return 0;
}

/* Order: the registers, segment and system registers and pending events
 * first (KVM_RUN enters and leaves with the guest's FPU state loaded, so it
 * must come before the XSAVE area is written), then the MSRs, XCR0 before
 * the XSAVE area it governs, the raw FPU view over the XSAVE area (see
 * above), the debug registers and the MP state. None of the later ioctls
 * touches the pending events. */
int vcpu_state_set(struct ab_sandbox *sb, const struct vcpu_state *st,
                   const char **what)
{
    int fd = sb->vcpu_fd;
    int rc = set_regs_sregs_events(sb, st, what);
    if (rc < 0)
        return rc;
    rc = ioctl(fd, KVM_SET_MSRS, &st->msrs);
    CHECK(rc, "KVM_SET_MSRS");
    if ((uint32_t)rc != st->msrs.header.nmsrs) {
        *what = "KVM_SET_MSRS";
        return -EIO;
    }
    CHECK(ioctl(fd, KVM_SET_XCRS, &st->xcrs), "KVM_SET_XCRS");
    CHECK(ioctl(fd, KVM_SET_XSAVE, st->xsave), "KVM_SET_XSAVE");
    CHECK(ioctl(fd, KVM_SET_FPU, &st->fpu), "KVM_SET_FPU");
    CHECK(ioctl(fd, KVM_SET_DEBUGREGS, &st->debugregs), "KVM_SET_DEBUGREGS");
    CHECK(ioctl(fd, KVM_SET_MP_STATE, &st->mp_state), "KVM_SET_MP_STATE");
    return 0;
}
