/*
 * Signals, as far as a guest can have them: a guest sends them only to
 * itself (raise, abort, kill(getpid(), ...)), so delivery is synchronous.
 * The dispositions (rt_sigaction), the mask (rt_sigprocmask) and the set
 * of pending signals behave as the kernel's do for one thread:
 *
 *   - a signal sent while blocked stays pending until it is unblocked;
 *   - a handler runs with the mask extended by sa_mask and the signal
 *     itself (unless SA_NODEFER), and SA_RESETHAND restores SIG_DFL;
 *   - the default action ignores SIGCHLD, SIGCONT, SIGURG and SIGWINCH
 *     (and the stop signals: there is nothing to stop), and ends the
 *     program for every other signal, as if killed by it (ab__exit).
 *
 * This is what makes abort() work unmodified: musl's abort raises SIGABRT,
 * runs a handler if the program installed one, then resets the disposition
 * and raises it again, which ends the run with -SIGABRT.
 */
#include "internal.h"

#include <errno.h>
#include <signal.h>
#include <sys/syscall.h>

/* The kernel's struct sigaction on x86_64 (musl: arch/x86_64/ksigaction.h). */
struct k_sigaction {
    void (*handler)(int);
    unsigned long flags;
    void (*restorer)(void);
    uint64_t mask;
};

#define NSIG_MAX 64
#define BIT(sig) (1ull << ((sig) - 1))
#define UNBLOCKABLE (BIT(SIGKILL) | BIT(SIGSTOP))
#define SELF 1 /* our pid and tid (getpid, gettid, set_tid_address) */

static struct k_sigaction actions[NSIG_MAX + 1];
static uint64_t blocked, pending;

static bool ignored_by_default(int sig) {
    switch (sig) {
    case SIGCHLD:
    case SIGCONT:
    case SIGURG:
    case SIGWINCH:
    case SIGSTOP:
    case SIGTSTP:
    case SIGTTIN:
    case SIGTTOU:
        return true;
    default:
        return false;
    }
}

static void deliver(int sig) {
    struct k_sigaction a = actions[sig];
    if (a.handler == SIG_IGN)
        return;
    if (a.handler == SIG_DFL) {
        if (!ignored_by_default(sig))
            ab__exit(0, sig);
        return;
    }
    uint64_t saved = blocked;
    blocked |= a.mask & ~UNBLOCKABLE;
    if (!(a.flags & SA_NODEFER))
        blocked |= BIT(sig);
    if (a.flags & SA_RESETHAND)
        actions[sig].handler = SIG_DFL;
    if (a.flags & SA_SIGINFO) {
        siginfo_t info;
        memset(&info, 0, sizeof info);
        info.si_signo = sig;
        info.si_code = SI_TKILL;
        info.si_pid = SELF;
        ((void (*)(int, siginfo_t *, void *))(void *)a.handler)(sig, &info, NULL);
    } else {
        a.handler(sig);
    }
    blocked = saved;
}

/* Delivers what is pending and no longer blocked, lowest number first. */
static void deliver_pending(void) {
    uint64_t ready;
    while ((ready = pending & ~blocked)) {
        int sig = __builtin_ctzll(ready) + 1;
        pending &= ~BIT(sig);
        deliver(sig);
    }
}

static long send_self(long sig) {
    if (sig < 0 || sig > NSIG_MAX)
        return -EINVAL;
    if (sig == 0)
        return 0; /* a permission check: we may signal ourselves */
    pending |= BIT(sig);
    deliver_pending();
    return 0;
}

static long sigaction_call(long sig, const struct k_sigaction *act, struct k_sigaction *old,
                           long size) {
    if (size != 8 || sig < 1 || sig > NSIG_MAX)
        return -EINVAL;
    if (act && (sig == SIGKILL || sig == SIGSTOP))
        return -EINVAL;
    if (old)
        *old = actions[sig];
    if (act) {
        actions[sig] = *act;
        /* Setting SIG_IGN (or SIG_DFL for a default-ignored signal)
         * discards a pending instance, as the kernel does. */
        if (act->handler == SIG_IGN || (act->handler == SIG_DFL && ignored_by_default((int)sig)))
            pending &= ~BIT(sig);
    }
    return 0;
}

static long sigprocmask_call(long how, const uint64_t *set, uint64_t *old, long size) {
    if (size != 8)
        return -EINVAL;
    uint64_t previous = blocked;
    if (set) {
        switch (how) {
        case SIG_BLOCK:
            blocked |= *set;
            break;
        case SIG_UNBLOCK:
            blocked &= ~*set;
            break;
        case SIG_SETMASK:
            blocked = *set;
            break;
        default:
            return -EINVAL;
        }
        blocked &= ~UNBLOCKABLE;
    }
    if (old)
        *old = previous;
    deliver_pending();
    return 0;
}

/* Waits for a signal that can never come from outside: only the call's
 * deadline (or a kill) ends the wait, as it would end a blocked process. */
_Noreturn static long wait_forever(void) {
    for (;;) {
        ab__writer w = ab__sys_begin(AB_SYS_SLEEP);
        ab__put_u64(&w, UINT64_MAX);
        ab__sys_call(&w);
    }
}

static long sigsuspend_call(const uint64_t *mask, long size) {
    if (size != 8)
        return -EINVAL;
    uint64_t saved = blocked;
    blocked = *mask & ~UNBLOCKABLE;
    if (pending & ~blocked) {
        deliver_pending();
        blocked = saved;
        return -EINTR;
    }
    return wait_forever();
}

long ab__signal_syscall(long n, long a1, long a2, long a3, long a4, bool *handled) {
    *handled = true;
    switch (n) {
    case SYS_rt_sigaction:
        return sigaction_call(a1, (const struct k_sigaction *)a2, (struct k_sigaction *)a3, a4);
    case SYS_rt_sigprocmask:
        return sigprocmask_call(a1, (const uint64_t *)a2, (uint64_t *)a3, a4);
    case SYS_rt_sigpending:
        if (a2 != 8)
            return -EINVAL;
        *(uint64_t *)a1 = pending & blocked;
        return 0;
    case SYS_rt_sigsuspend:
        return sigsuspend_call((const uint64_t *)a1, a2);
    case SYS_pause:
        return wait_forever();
    case SYS_sigaltstack:
        if (a2)
            memset((void *)a2, 0, sizeof(stack_t));
        if (a2)
            ((stack_t *)a2)->ss_flags = SS_DISABLE;
        return 0;
    case SYS_kill:
        return a1 == SELF || a1 == 0 || a1 == -1 ? send_self(a2) : -ESRCH;
    case SYS_tkill:
        return a1 == SELF ? send_self(a2) : -ESRCH;
    case SYS_tgkill:
        return a1 == SELF && a2 == SELF ? send_self(a3) : -ESRCH;
    default:
        *handled = false;
        return -ENOSYS;
    }
}
