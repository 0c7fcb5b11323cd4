/* A call's limits, enforced by the kernel: the wall-clock deadline
 * (`timeout=`) and the CPU-time budget (`cpu_timeout=`).
 *
 * Each is a POSIX timer that sends the kick signal to the vCPU thread
 * itself (SIGEV_THREAD_ID) when it expires:
 *
 *   deadline  CLOCK_MONOTONIC, absolute expiry. It keeps running while the
 *             guest waits for a host function: host time counts.
 *   budget    the vCPU thread's CPU time (CLOCK_THREAD_CPUTIME_ID), watched
 *             by a CLOCK_MONOTONIC "sampler": a thread cannot use more CPU
 *             time than the wall-clock time that passes, so the sampler is
 *             armed for what is left of the budget; when it fires the
 *             thread reads its CPU clock, and if it shared its CPU meanwhile
 *             (the budget is not spent) the sampler is armed again for what
 *             is left. A timer on the CPU-time clock itself would only be
 *             checked at the kernel's tick (4 ms at HZ=250), and costs more
 *             to arm. The budget is paused while the thread hands an event
 *             to Python (host calls, log records, system requests) and
 *             re-armed with what is left when the call resumes: host time
 *             does not count, and neither does the thread's polling for the
 *             next command.
 * While a debugger holds the guest (a DEBUG_STOP event) both are paused,
 * the deadline moving later by the time held.
 *
 * The signal is only a wake-up: like any kick it makes KVM_RUN return
 * EINTR, at once if it came while the thread was outside (signal.c, N2).
 * What the thread then does ([T5] in vcpu.c, limits_check) is decided by
 * the clocks: if the deadline has passed or the budget is spent, it does
 * what kill() does — set CANCEL — and records *why* in `outcome`, but only
 * if CANCEL was not already set: a kill() that came first stays a
 * cancellation. The vCPU thread turns CANCEL + outcome into a TIMEOUT or
 * CPU_TIMEOUT event instead of CANCELLED.
 *
 * Stale signals cannot stop a call: a timer's signal that is still pending
 * when its call has ended (the call returned just as it fired) causes at
 * most one EINTR in a later call, whose own clocks say "not yet", and the
 * guest is re-entered (a stale kick).
 *
 * Lost signals cannot let a call run on: once expired, both timers fire
 * again every retry_delay until the call's last event disarms them, for a
 * signal discarded before its EINTR (signal.c: installing SIG_IGN does
 * that).
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

static bool trip(struct ab_limits *l, uint32_t outcome);

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
}

static int create_timer(struct ab_sandbox *sb, clockid_t clock, timer_t *out)
{
    struct sigevent sev;
    memset(&sev, 0, sizeof sev);
    sev.sigev_notify = SIGEV_THREAD_ID;
    sev.sigev_signo = sb->ih->signo;
    sev.sigev_notify_thread_id = (pid_t)syscall(SYS_gettid);
    if (timer_create(clock, &sev, out) != 0)
        return -errno;
    return 0;
}

/* A limit's timer: first at `ns`, then again every retry_delay until it
 * is disarmed, in case a signal was discarded before its EINTR. */
static int arm_limit(struct ab_sandbox *sb, timer_t t, int flags, uint64_t ns)
{
    uint64_t again = sb->ih->retry_delay_ns ? sb->ih->retry_delay_ns
                                            : 1000000ull;
    struct itimerspec its = {.it_value = ns_ts(ns),
                             .it_interval = ns_ts(again)};
    return timer_settime(t, flags, &its, NULL) == 0 ? 0 : -errno;
}

static int arm_once(timer_t t, uint64_t ns)
{
    struct itimerspec its = {.it_value = ns_ts(ns)};
    return timer_settime(t, 0, &its, NULL) == 0 ? 0 : -errno;
}

/* The shortest wait of the budget's sampler: with less left, the budget is
 * looked at again this much later (an overshoot of at most this much CPU
 * time), rather than in a storm of exits. */
#define CPU_SAMPLE_MIN_NS 50000ull

/* CPU time the call has used: earlier stretches, plus the current one
 * unless an event is with Python. */
static uint64_t cpu_used(const struct ab_limits *l)
{
    return l->cpu_used_ns +
           (l->cpu_paused ? 0 : thread_cpu_ns() - l->cpu_since_ns);
}

/* Look at the budget when `left` more CPU time could have been used. */
static int arm_sampler(struct ab_sandbox *sb, uint64_t left)
{
    struct ab_limits *l = &sb->limits;
    l->cpu_check_at_ns =
        mono_ns() + (left > CPU_SAMPLE_MIN_NS ? left : CPU_SAMPLE_MIN_NS);
    return arm_limit(sb, l->cpu, TIMER_ABSTIME, l->cpu_check_at_ns);
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
    l->outcome = 0;
    l->cpu_used_ns = 0;
    l->cpu_paused = false;
    /* The stretch starts now (a failure below still ends it cleanly). */
    l->cpu_since_ns = l->cpu_ns ? thread_cpu_ns() : 0;
    l->wall_paused = false;
    l->spread_on = placement_call_begin(sb) && sb->config.spread_ns;
    l->active = l->deadline_ns != 0 || l->cpu_ns != 0 || l->spread_on;
    if (!l->active)
        return 0;
    int rc;
    if (l->deadline_ns && !l->have_wall) {
        rc = create_timer(sb, CLOCK_MONOTONIC, &l->wall);
        if (rc) {
            *what = "timer_create(CLOCK_MONOTONIC)";
            return rc;
        }
        l->have_wall = true;
    }
    if (l->cpu_ns && !l->have_cpu) {
        rc = create_timer(sb, CLOCK_MONOTONIC, &l->cpu);
        if (rc) {
            *what = "timer_create(CLOCK_MONOTONIC, CPU budget)";
            return rc;
        }
        l->have_cpu = true;
    }
    if (l->spread_on && !l->have_spread) {
        rc = create_timer(sb, CLOCK_MONOTONIC, &l->spread);
        if (rc) { /* placement is an optimisation: go on without it */
            l->spread_on = false;
        } else {
            l->have_spread = true;
        }
    }
    if (l->deadline_ns) {
        /* A deadline already past fires at once. */
        rc = arm_limit(sb, l->wall, TIMER_ABSTIME, l->deadline_ns);
        if (rc) {
            *what = "timer_settime(deadline)";
            limits_end(sb);
            return rc;
        }
    }
    if (l->cpu_ns) {
        rc = arm_sampler(sb, l->cpu_ns);
        if (rc) {
            *what = "timer_settime(CPU budget)";
            limits_end(sb);
            return rc;
        }
    }
    if (l->spread_on) {
        l->spread_at_ns = mono_ns() + sb->config.spread_ns;
        if (arm_once(l->spread, sb->config.spread_ns) != 0)
            l->spread_on = false;
    }
    return 0;
}

void limits_pause(struct ab_sandbox *sb, bool deadline_too)
{
    struct ab_limits *l = &sb->limits;
    if (!l->active)
        return;
    if (deadline_too && l->deadline_ns && !l->wall_paused) {
        /* A debugger holds the guest: the deadline stops counting. */
        uint64_t t = mono_ns();
        l->wall_left_ns = l->deadline_ns > t ? l->deadline_ns - t : 1;
        disarm(l->wall);
        l->wall_paused = true;
    }
    if (l->cpu_ns && !l->cpu_paused) {
        disarm(l->cpu);
        l->cpu_used_ns = cpu_used(l);
        l->cpu_paused = true;
    }
}

int limits_resume(struct ab_sandbox *sb)
{
    struct ab_limits *l = &sb->limits;
    if (!l->active)
        return 0;
    if (l->wall_paused) {
        l->deadline_ns = mono_ns() + l->wall_left_ns;
        l->wall_paused = false;
        int rc = arm_limit(sb, l->wall, TIMER_ABSTIME, l->deadline_ns);
        if (rc)
            return rc;
    }
    if (!l->cpu_ns || !l->cpu_paused)
        return 0;
    l->cpu_paused = false;
    l->cpu_since_ns = thread_cpu_ns();
    /* The budget ran out in an earlier stretch, before its sampler looked:
     * a guest that keeps calling the host in short stretches could
     * otherwise run past it for as long as no sampler fires while it runs. */
    if (l->cpu_used_ns >= l->cpu_ns) {
        trip(l, AB_EV_CPU_TIMEOUT);
        return 0;
    }
    return arm_sampler(sb, l->cpu_ns - l->cpu_used_ns);
}

void limits_end(struct ab_sandbox *sb)
{
    struct ab_limits *l = &sb->limits;
    placement_call_end(sb);
    if (!l->active)
        return;
    l->active = false;
    if (l->deadline_ns && l->have_wall)
        disarm(l->wall);
    if (l->cpu_ns && l->have_cpu) {
        disarm(l->cpu);
        l->cpu_used_ns = cpu_used(l);
        l->cpu_paused = true;
    }
    if (l->spread_on) {
        disarm(l->spread);
        l->spread_on = false;
    }
}

bool limits_check(struct ab_sandbox *sb)
{
    struct ab_limits *l = &sb->limits;
    if (!l->active)
        return false;
    bool reason = false, tripped = false;
    uint64_t now = mono_ns();
    if (l->deadline_ns && !l->wall_paused && now >= l->deadline_ns) {
        tripped = trip(l, AB_EV_TIMEOUT);
        reason = true;
    } else if (l->cpu_ns && !l->cpu_paused) {
        uint64_t used = cpu_used(l);
        if (used >= l->cpu_ns) {
            tripped = trip(l, AB_EV_CPU_TIMEOUT);
            reason = true;
        } else if (now >= l->cpu_check_at_ns) {
            /* The sampler came before the budget was spent: the thread
             * shared its CPU. Look again when it could be. (Should this
             * fail, the sampler fires again every retry_delay.) */
            (void)arm_sampler(sb, l->cpu_ns - used);
            reason = true;
        }
    }
    if (tripped) { /* the timer's signal stopped the guest: a kick sent */
        atomic_fetch_add_explicit(&sb->counters.signals_sent, 1,
                                  memory_order_relaxed);
        atomic_fetch_add_explicit(&ab_process_counters.signals_sent, 1,
                                  memory_order_relaxed);
    }
    if (l->spread_on && now >= l->spread_at_ns) {
        /* A long call: let it leave the loop's CPU. */
        l->spread_on = false;
        placement_spread(sb);
        reason = true;
    }
    return reason;
}

uint32_t limits_outcome(struct ab_sandbox *sb)
{
    return sb->limits.outcome;
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

/* A limit ran out: what kill() does (CANCEL), and why; false if CANCEL was
 * already set (the limit is not why the call stops). On the vCPU thread,
 * which sees CANCEL next: at [T5] right after limits_check(), or at [T2]
 * after a RESUME. */
static bool trip(struct ab_limits *l, uint32_t outcome)
{
    uint8_t old = atomic_fetch_or_explicit(&l->ih->state, AB_CANCEL_BIT,
                                           memory_order_acq_rel);
    if (old & AB_CANCEL_BIT)
        return false; /* a kill() came first: it stays a cancellation */
    l->outcome = outcome;
    return true;
}
