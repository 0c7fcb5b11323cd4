/* The kick signal: SIGRTMIN + sig_rt_min_offset. Kicks (pthread_kill() in
 * interrupt.c) and the call-limit timers (SIGEV_THREAD_ID, limits.c) send
 * it to a vCPU thread; what stops the guest is the EINTR of KVM_RUN.
 * docs/cancellation.md ("The kick signal") states the contract.
 *
 * The signal is never delivered, so aionub installs no handler and the
 * application's disposition of the signal — SIG_DFL, SIG_IGN, a handler of
 * its own, changed at any moment — changes nothing:
 *
 *  [N1] A vCPU thread blocks every signal, the kick included, for its whole
 *       life (kick_signal_block_all).
 *  [N2] Its vCPU has a KVM signal mask in which only the kick is unblocked
 *       (kick_signal_unblock_in_run). KVM installs that mask for the
 *       duration of KVM_RUN, keeping the thread's own in real_blocked, and
 *       puts the thread's own back before returning to user space. So a
 *       kick that arrives while the guest runs makes KVM_RUN return EINTR,
 *       and one that arrives while the thread is in user space stays
 *       pending and makes the next KVM_RUN return EINTR at once: none is
 *       lost between the CANCEL check and the entry. Either way the signal
 *       is blocked again when the thread is back in user space, so no
 *       handler ever runs on it.
 *  [N3] The kernel counts a signal in real_blocked as blocked: while the
 *       thread is in KVM_RUN the kick is neither discarded as ignored
 *       (SIG_IGN) nor fatal to the process (SIG_DFL).
 *  [N4] The thread takes the pending kicks off its queue
 *       (kick_signal_drain): after an EINTR that does not end the call,
 *       before it re-enters the guest, and after a stopped call's event is
 *       published. Nothing is read from them: CANCEL, DEBUG_INTERRUPT and
 *       the call's clocks (limits.c) say why the guest was stopped.
 *
 * Since every signal is blocked on vCPU threads, a process-directed signal
 * never lands on one: the application may use the kick signal for itself.
 *
 * One thing can still take a kick away: installing SIG_IGN discards the
 * signal's pending instances (POSIX), a kick that has not caused its EINTR
 * yet included. Kicks are repeated until the vCPU stops (interrupt.c), and
 * an expired limit's timer fires again every retry_delay (limits.c), so
 * such a loss only delays the stop by retry_delay.
 */
#include "internal.h"

#include <errno.h>
#include <linux/kvm.h>
#include <signal.h>
#include <string.h>
#include <sys/ioctl.h>

/* A bound on one drain, so that a thread flooded with signals still gets
 * back to its guest (what is left waits for the next EINTR). */
#define DRAIN_MAX 256

void kick_signal_block_all(void)
{
    sigset_t all;
    sigfillset(&all);
    pthread_sigmask(SIG_SETMASK, &all, NULL);
}

int kick_signal_unblock_in_run(int vcpu_fd, int signo)
{
    /* The kernel's sigset for x86-64: 64 bits, signal n is bit n - 1.
     * KVM takes it with the length in front (struct kvm_signal_mask, whose
     * sigset member starts right after `len`, unaligned). */
    uint64_t mask = ~0ull & ~(1ull << (signo - 1));
    unsigned char buf[sizeof(struct kvm_signal_mask) + sizeof mask];
    struct kvm_signal_mask *km = (struct kvm_signal_mask *)buf;
    km->len = sizeof mask;
    memcpy(km->sigset, &mask, sizeof mask);
    return ioctl(vcpu_fd, KVM_SET_SIGNAL_MASK, km) == 0 ? 0 : -errno;
}

void kick_signal_drain(int signo)
{
    sigset_t kick;
    sigemptyset(&kick);
    sigaddset(&kick, signo);
    const struct timespec no_wait = {0, 0};
    for (int i = 0; i < DRAIN_MAX; i++) {
        if (sigtimedwait(&kick, NULL, &no_wait) != signo)
            break; /* EAGAIN: none left */
    }
}
