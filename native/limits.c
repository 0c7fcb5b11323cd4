/* A call's limits, enforced by the kernel: the wall-clock deadline
 * (`timeout=`) and the CPU-time budget (`cpu_timeout=`).
 *
 * Each is a POSIX timer that signals the vCPU thread itself
 * (SIGEV_THREAD_ID) with the kick signal when it expires:
 *
 *   deadline  CLOCK_MONOTONIC, absolute expiry. It keeps running while the
 *             guest waits for a host function: host time counts.
 *   budget    CLOCK_THREAD_CPUTIME_ID of the vCPU thread, relative. It is
 *             paused while the thread hands an event to Python (host calls,
 *             log records, system requests) and re-armed with what was left
 *             when the call resumes: host time does not count, and neither
 *             does the thread's polling for the next command.
 * While a debugger holds the guest (a DEBUG_STOP event) both are paused,
 * the deadline moving later by the time held.
 *
 * The handler (signal.c, on the vCPU thread) calls limits_expired(), which
 * follows the interrupt handle's protocol exactly like a kill() from
 * another thread: set CANCEL, then immediate_exit (the kick), so a
 * signal that lands before KVM_RUN is entered is not lost, and the EINTR
 * path ([T5] in vcpu.c) sees CANCEL. It also records *why* in `outcome`,
 * but only if CANCEL was not already set: a kill() that came first stays
 * a cancellation. The vCPU thread turns CANCEL + outcome into a TIMEOUT or
 * CPU_TIMEOUT event instead of CANCELLED.
 *
 * Stale signals. `armed` is set before a timer is armed and cleared before
 * it is disarmed, on the vCPU thread, and the handler ignores a signal
 * while it is clear. A timer's signal is delivered to this thread at the
 * latest on the return from the syscall that disarms it (or dropped by
 * the kernel when the timer is re-programmed), so no signal from one call
 * can reach the next.
 *
 * The same machinery runs the placement's spread timer (placement.c),
 * which only unpins the vCPU thread when a pinned call runs long.
 *
 * Timers are created lazily, on the vCPU thread, by the first call that
 * needs them (idle sandboxes hold none), and deleted at teardown.
 */
#include "internal.h"

#include <errno.h>
#include <signal.h>
#include <string.h>
#include <sys/syscall.h>
#include <time.h>
#include <unistd.h>

#ifndef sigev_notify_thread_id
#define sigev_notify_thread_id _sigev_un._tid
#endif

static void trip(struct ab_limits *l, uint32_t outcome);

static uint64_t ts_ns(const struct timespec *t)
{
    return (uint64_t)t->tv_sec * 1000000000ull + (uint64_t)t->tv_nsec;
}

static struct timespec ns_ts(uint64_t ns)
{
    return (struct timespec){.tv_sec = (time_t)(ns / 1000000000ull),
                             .tv_nsec = (long)(ns % 1000000000ull)};
}

static uint64_t thread_cpu_ns(void)
{
    struct timespec t;
    clock_gettime(CLOCK_THREAD_CPUTIME_ID, &t);
    return ts_ns(&t);
}

void limits_bind_thread(struct ab_sandbox *sb)
{
    sb->limits.sb = sb;
    sb->limits.ih = sb->ih;
    kick_signal_set_limits(&sb->limits);
}

static int create_timer(struct ab_sandbox *sb, clockid_t clock,
                        const void *tag, timer_t *out)
{
    struct sigevent sev;
    memset(&sev, 0, sizeof sev);
    sev.sigev_notify = SIGEV_THREAD_ID;
    sev.sigev_signo = sb->ih->signo;
    sev.sigev_value.sival_ptr = (void *)tag;
    sev.sigev_notify_thread_id = (pid_t)syscall(SYS_gettid);
    if (timer_create(clock, &sev, out) != 0)
        return -errno;
    return 0;
}

static int arm(timer_t t, int flags, uint64_t ns)
{
    struct itimerspec its = {.it_value = ns_ts(ns)};
    return timer_settime(t, flags, &its, NULL) == 0 ? 0 : -errno;
}

static void disarm(timer_t t)
{
    struct itimerspec zero;
    memset(&zero, 0, sizeof zero);
    timer_settime(t, 0, &zero, NULL);
}

int limits_begin(struct ab_sandbox *sb, const char **what)
{
    struct ab_limits *l = &sb->limits;
    atomic_store_explicit(&l->outcome, 0, memory_order_relaxed);
    atomic_store_explicit(&l->spread_fired, false, memory_order_relaxed);
    l->cpu_used_ns = 0;
    l->wall_paused = false;
    l->spread_on = placement_call_begin(sb) && sb->config.spread_ns;
    l->active = l->deadline_ns != 0 || l->cpu_ns != 0 || l->spread_on;
    if (!l->active)
        return 0;
    /* The handler re-checks that the kick handler is ours before every
     * kick it sends; a timer signals without asking, so check here. */
    int rc = kick_signal_ensure(sb->ih->signo, &sb->counters);
    if (rc) {
        *what = "installing the kick signal's handler";
        return rc;
    }
    if (l->deadline_ns && !l->have_wall) {
        rc = create_timer(sb, CLOCK_MONOTONIC, &l->wall_tag, &l->wall);
        if (rc) {
            *what = "timer_create(CLOCK_MONOTONIC)";
            return rc;
        }
        l->have_wall = true;
    }
    if (l->cpu_ns && !l->have_cpu) {
        rc = create_timer(sb, CLOCK_THREAD_CPUTIME_ID, &l->cpu_tag, &l->cpu);
        if (rc) {
            *what = "timer_create(CLOCK_THREAD_CPUTIME_ID)";
            return rc;
        }
        l->have_cpu = true;
    }
    if (l->spread_on && !l->have_spread) {
        rc = create_timer(sb, CLOCK_MONOTONIC, &l->spread_tag, &l->spread);
        if (rc) { /* placement is an optimisation: go on without it */
            l->spread_on = false;
        } else {
            l->have_spread = true;
        }
    }
    /* Release: armed before the timers, so an expiry that is already due
     * (a deadline in the past) is not ignored as stale. */
    atomic_store_explicit(&l->armed, true, memory_order_seq_cst);
    if (l->deadline_ns) {
        rc = arm(l->wall, TIMER_ABSTIME, l->deadline_ns);
        if (rc) {
            *what = "timer_settime(deadline)";
            limits_end(sb);
            return rc;
        }
    }
    if (l->cpu_ns) {
        l->cpu_left_ns = l->cpu_ns;
        l->cpu_since_ns = thread_cpu_ns();
        rc = arm(l->cpu, 0, l->cpu_left_ns);
        if (rc) {
            *what = "timer_settime(CPU budget)";
            limits_end(sb);
            return rc;
        }
    }
    if (l->spread_on && arm(l->spread, 0, sb->config.spread_ns) != 0)
        l->spread_on = false;
    return 0;
}

void limits_pause(struct ab_sandbox *sb, bool deadline_too)
{
    struct ab_limits *l = &sb->limits;
    if (!l->active)
        return;
    if (deadline_too && l->deadline_ns && !l->wall_paused) {
        /* A debugger holds the guest: the deadline stops counting. */
        struct timespec now;
        clock_gettime(CLOCK_MONOTONIC, &now);
        uint64_t t = ts_ns(&now);
        l->wall_left_ns = l->deadline_ns > t ? l->deadline_ns - t : 1;
        disarm(l->wall);
        l->wall_paused = true;
    }
    if (!l->cpu_ns)
        return;
    struct itimerspec left;
    if (timer_gettime(l->cpu, &left) == 0 && ts_ns(&left.it_value) != 0)
        l->cpu_left_ns = ts_ns(&left.it_value);
    else
        l->cpu_left_ns = 1; /* expired: its signal has set CANCEL already */
    disarm(l->cpu);
    l->cpu_used_ns += thread_cpu_ns() - l->cpu_since_ns;
}

int limits_resume(struct ab_sandbox *sb)
{
    struct ab_limits *l = &sb->limits;
    if (!l->active)
        return 0;
    if (l->wall_paused) {
        struct timespec now;
        clock_gettime(CLOCK_MONOTONIC, &now);
        l->deadline_ns = ts_ns(&now) + l->wall_left_ns;
        l->wall_paused = false;
        int rc = arm(l->wall, TIMER_ABSTIME, l->deadline_ns);
        if (rc)
            return rc;
    }
    if (!l->cpu_ns)
        return 0;
    /* The budget ran out in an earlier stretch, but its timer, checked only
     * at the kernel's tick, had not fired yet: a guest that keeps calling
     * the host in short stretches could otherwise run past it for as long
     * as no tick lands while it runs. */
    if (l->cpu_used_ns >= l->cpu_ns) {
        trip(l, AB_EV_CPU_TIMEOUT);
        return 0;
    }
    l->cpu_since_ns = thread_cpu_ns();
    return arm(l->cpu, 0, l->cpu_left_ns);
}

void limits_end(struct ab_sandbox *sb)
{
    struct ab_limits *l = &sb->limits;
    placement_call_end(sb);
    if (!l->active)
        return;
    l->active = false;
    /* Before disarming: a signal delivered from here on is stale. */
    atomic_store_explicit(&l->armed, false, memory_order_seq_cst);
    if (l->deadline_ns && l->have_wall)
        disarm(l->wall);
    if (l->cpu_ns && l->have_cpu) {
        disarm(l->cpu);
        l->cpu_used_ns += thread_cpu_ns() - l->cpu_since_ns;
    }
    if (l->spread_on) {
        disarm(l->spread);
        l->spread_on = false;
    }
}

uint32_t limits_outcome(struct ab_sandbox *sb)
{
    return atomic_load_explicit(&sb->limits.outcome, memory_order_relaxed);
}

void limits_free(struct ab_sandbox *sb)
{
    struct ab_limits *l = &sb->limits;
    if (l->have_wall)
        timer_delete(l->wall);
    if (l->have_cpu)
        timer_delete(l->cpu);
    if (l->have_spread)
        timer_delete(l->spread);
    l->have_wall = l->have_cpu = l->have_spread = false;
}

/* Async-signal-safe: atomics only. On the vCPU thread, in the handler. */
void limits_expired(struct ab_limits *l, const void *tag)
{
    if (!atomic_load_explicit(&l->armed, memory_order_seq_cst))
        return; /* stale: the call it was armed for has ended */
    if (tag == &l->spread_tag) { /* a long call: let it leave the loop's CPU */
        placement_spread(l->sb);
        atomic_store_explicit(&l->spread_fired, true, memory_order_relaxed);
        return;
    }
    trip(l, tag == &l->cpu_tag ? AB_EV_CPU_TIMEOUT : AB_EV_TIMEOUT);
    /* The kernel sent this kick signal for us: count it like ours. */
    atomic_fetch_add_explicit(&l->sb->counters.signals_sent, 1,
                              memory_order_relaxed);
    atomic_fetch_add_explicit(&ab_process_counters.signals_sent, 1,
                              memory_order_relaxed);
}

/* A limit ran out: what kill() does (CANCEL, then the kick), and why.
 * Async-signal-safe. */
static void trip(struct ab_limits *l, uint32_t outcome)
{
    uint8_t old = atomic_fetch_or_explicit(&l->ih->state, AB_CANCEL_BIT,
                                           memory_order_acq_rel);
    if (!(old & AB_CANCEL_BIT))
        atomic_store_explicit(&l->outcome, outcome, memory_order_relaxed);
    /* The kick: a KVM_RUN entered after this returns EINTR at once. While
     * armed (a call is running) the run page is mapped and only this
     * thread could replace it (restore's rebuild runs between calls). */
    struct kvm_run *run = l->sb->run;
    if (run)
        atomic_store_explicit((_Atomic uint8_t *)&run->immediate_exit, 1,
                              memory_order_seq_cst);
}
