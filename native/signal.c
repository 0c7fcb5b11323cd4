/* The kick signal's handler: SIGRTMIN + sig_rt_min_offset, one handler per
 * process and signal, shared by every sandbox using that signal.
 * docs/cancellation.md ("The kick signal") states the contract.
 *
 * A kick is pthread_kill() of a vCPU thread sitting in KVM_RUN; what stops
 * the guest is the EINTR, so for a kick the handler does nothing. Two
 * things make that fragile, and this file handles both:
 *
 *  - Someone else may replace the handler: Python's signal module (which
 *    never knew about ours, so a save/restore "restores" SIG_DFL, and the
 *    next kick would kill the process), SIG_IGN (the kick would be
 *    discarded and the guest never stopped), or an application's own
 *    handler. kick_signal_ensure() is called at sandbox creation and before
 *    every kick signal: it looks at the installed action and, if it is not
 *    ours, installs ours again (counted in handler_reinstalls).
 *
 *  - The signal is not only ours: an application may use it too. The
 *    handler that was installed before ours (or found in our place at a
 *    re-install) is kept, and every signal that is not a kick is forwarded
 *    to it. A kick is a signal that arrives on a vCPU thread, sent by
 *    tgkill() (si_code SI_TKILL) from this process (si_pid == getpid()),
 *    or the expiry of one of that thread's call-limit timers (SI_TIMER,
 *    si_value naming the timer; limits.c), which acts like a kill().
 *    When there is no function handler to forward to (SIG_DFL or SIG_IGN
 *    was installed before ours), a foreign signal is ignored.
 *
 * Lock order: an interrupt handle's kick_lock, then handler_lock.
 */
#include "internal.h"

#include <errno.h>
#include <signal.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

/* A handler that signals which are not kicks are forwarded to. Immutable
 * once published; never freed, because the signal handler may be reading
 * one at any time. Interned: one per distinct function (and calling
 * convention) ever seen for a signal, so a library that keeps swapping
 * handlers cannot make this grow without bound. */
struct chained {
    bool siginfo; /* SA_SIGINFO: call fn.action, else fn.handler */
    union {
        void (*handler)(int);
        void (*action)(int, siginfo_t *, void *);
    } fn;
    const struct chained *next; /* the interned list (handler_lock) */
};

struct kick_signal {
    /* What the handler forwards foreign signals to; NULL: ignore them.
     * Written under handler_lock with Release, read by the handler with
     * Acquire. */
    _Atomic(const struct chained *) chained;
    const struct chained *interned; /* handler_lock */
    _Atomic bool installed;         /* ours was installed once (Release) */
};

static pthread_mutex_t handler_lock = PTHREAD_MUTEX_INITIALIZER;
static struct kick_signal kick_signals[_NSIG];

/* Set on vCPU threads only. initial-exec: reading it in the handler must be
 * a plain thread-pointer-relative load, not a __tls_get_addr() call that
 * could allocate (this is a dlopen()ed module). */
static _Thread_local bool on_vcpu_thread
    __attribute__((tls_model("initial-exec")));

void kick_signal_mark_vcpu_thread(void) { on_vcpu_thread = true; }

/* The vCPU thread's call limits (limits.c), whose timers signal it. */
static _Thread_local struct ab_limits *thread_limits
    __attribute__((tls_model("initial-exec")));

void kick_signal_set_limits(struct ab_limits *limits)
{
    thread_limits = limits;
}

/* Async-signal-safe: getpid(), an atomic load, and the chained handler. */
static void kick_handler(int signo, siginfo_t *info, void *ctx)
{
    /* A kick: its whole effect is the EINTR of KVM_RUN. */
    if (on_vcpu_thread && info && info->si_code == SI_TKILL &&
        info->si_pid == getpid())
        return;
    /* One of this thread's call-limit timers (limits.c): it acts as a
     * kill() would. Any other timer's signal is foreign. */
    struct ab_limits *limits = thread_limits;
    if (on_vcpu_thread && limits && info && info->si_code == SI_TIMER &&
        (info->si_value.sival_ptr == &limits->wall_tag ||
         info->si_value.sival_ptr == &limits->cpu_tag ||
         info->si_value.sival_ptr == &limits->spread_tag)) {
        limits_expired(limits, info->si_value.sival_ptr);
        return;
    }
    /* Acquire: pairs with the Release in publish(); the struct's fields
     * are visible. */
    const struct chained *c = atomic_load_explicit(
        &kick_signals[signo].chained, memory_order_acquire);
    if (!c)
        return; /* SIG_DFL or SIG_IGN was there before ours: ignored */
    /* Its sa_mask and flags (SA_RESETHAND, SA_NODEFER...) cannot be
     * honoured from in here; it runs under ours (an empty mask). */
    if (c->siginfo)
        c->fn.action(signo, info, ctx);
    else
        c->fn.handler(signo);
}

static bool is_ours(const struct sigaction *sa)
{
    return (sa->sa_flags & SA_SIGINFO) && sa->sa_sigaction == kick_handler;
}

static bool is_function(const struct sigaction *sa)
{
    return sa->sa_handler != SIG_DFL && sa->sa_handler != SIG_IGN;
}

static bool same_handler(const struct sigaction *a, const struct sigaction *b)
{
    return (a->sa_flags & SA_SIGINFO) == (b->sa_flags & SA_SIGINFO) &&
           a->sa_handler == b->sa_handler; /* the union's common pointer */
}

/* The interned record of `sa`, a function handler, or NULL if out of
 * memory. handler_lock held. */
static const struct chained *intern(struct kick_signal *ks,
                                    const struct sigaction *sa)
{
    bool siginfo = (sa->sa_flags & SA_SIGINFO) != 0;
    for (const struct chained *c = ks->interned; c; c = c->next) {
        if (c->siginfo == siginfo &&
            (siginfo ? c->fn.action == sa->sa_sigaction
                     : c->fn.handler == sa->sa_handler))
            return c;
    }
    struct chained *c = calloc(1, sizeof *c);
    if (!c)
        return NULL;
    c->siginfo = siginfo;
    if (siginfo)
        c->fn.action = sa->sa_sigaction;
    else
        c->fn.handler = sa->sa_handler;
    c->next = ks->interned;
    ks->interned = c;
    return c;
}

/* Forward foreign signals to `sa` from now on if it is a function handler;
 * SIG_DFL or SIG_IGN leave the chained handler as it was (see
 * docs/cancellation.md for why). -ENOMEM if it could not be recorded.
 * handler_lock held. */
static int chain_to(struct kick_signal *ks, const struct sigaction *sa)
{
    if (!is_function(sa))
        return 0;
    const struct chained *c = intern(ks, sa);
    if (!c)
        return -ENOMEM;
    /* Release: pairs with the Acquire in kick_handler(). */
    atomic_store_explicit(&ks->chained, c, memory_order_release);
    return 0;
}

/* Install ours in place of `cur` (what sigaction() reported a moment ago).
 * Returns 0 or -errno. handler_lock held. */
static int install_locked(struct kick_signal *ks, int signo,
                          const struct sigaction *cur)
{
    bool first = !atomic_load_explicit(&ks->installed, memory_order_relaxed);
    /* [S1] Chain to what we replace before ours can run, so no foreign
     * signal finds ours installed but the handler it should reach not yet
     * published. Out of memory: the first install fails (an application's
     * handler must not be dropped silently); a re-install goes ahead, or
     * the kick could not work, keeping the previous chained handler. */
    int rc = chain_to(ks, cur);
    if (rc && first)
        return rc;
    struct sigaction ours, replaced;
    memset(&ours, 0, sizeof ours);
    ours.sa_sigaction = kick_handler;
    ours.sa_flags = SA_SIGINFO; /* no SA_RESTART: KVM_RUN must see EINTR */
    sigemptyset(&ours.sa_mask);
    if (sigaction(signo, &ours, &replaced) != 0)
        return -errno;
    /* [S2] sigaction() outside our lock (another library, Python) may have
     * installed something between our read and our write: chain to what
     * was actually replaced. */
    if (!same_handler(&replaced, cur))
        (void)chain_to(ks, &replaced);
    /* Release: pairs with the Acquire of the unlocked check in
     * kick_signal_ensure(). */
    atomic_store_explicit(&ks->installed, true, memory_order_release);
    return 0;
}

static void count_reinstall(struct ab_counters *counters)
{
    atomic_fetch_add_explicit(&ab_process_counters.handler_reinstalls, 1,
                              memory_order_relaxed);
    if (counters)
        atomic_fetch_add_explicit(&counters->handler_reinstalls, 1,
                                  memory_order_relaxed);
}

int kick_signal_ensure(int signo, struct ab_counters *counters)
{
    if (signo < SIGRTMIN || signo > SIGRTMAX || signo >= _NSIG)
        return -EINVAL;
    struct kick_signal *ks = &kick_signals[signo];
    struct sigaction cur;
    /* The common case, without the lock: ours is in place. */
    if (atomic_load_explicit(&ks->installed, memory_order_acquire) &&
        sigaction(signo, NULL, &cur) == 0 && is_ours(&cur))
        return 0;
    pthread_mutex_lock(&handler_lock);
    int rc = 0;
    if (sigaction(signo, NULL, &cur) != 0) {
        rc = -errno;
    } else if (!is_ours(&cur)) { /* (another kicker may have fixed it) */
        bool reinstall =
            atomic_load_explicit(&ks->installed, memory_order_relaxed);
        rc = install_locked(ks, signo, &cur);
        if (rc == 0 && reinstall)
            count_reinstall(counters);
    }
    pthread_mutex_unlock(&handler_lock);
    return rc;
}
