/* Where a sandbox's vCPU thread runs (the `placement` option).
 *
 * A call is a round trip between two threads: the event loop's (which
 * submits and later takes the completion) and the vCPU thread. When the
 * two share a CPU, each hand-over is a context switch; on two CPUs it is a
 * cross-CPU wake-up, which in a nested VM costs an IPI through the outer
 * hypervisor: the noop round trip is about 2.5x slower. Left alone, the
 * scheduler mostly picks the slow placement.
 *
 * AB_PLACEMENT_COLOCATE:
 *  - At the submit of a call, when no other call of the process is in
 *    flight, the submitting thread is pinned to the CPU it runs on (once;
 *    its previous affinity is kept) and the vCPU thread to the same CPU
 *    (sched_setaffinity, only when that changes).
 *  - When other calls are in flight (many busy sandboxes), both are
 *    unpinned: the scheduler spreads the guests over the CPUs; and the
 *    sandbox stays unpinned until it has made PLACEMENT_COOLDOWN_CALLS
 *    calls alone.
 *  - Closing the sandbox (ab_sandbox_release_placement, on the submitting
 *    thread) gives that thread its affinity back.
 *  - A pinned call that runs longer than spread_ns is unpinned by a timer
 *    on the vCPU thread (limits.c arms it with the call's other timers), so
 *    a long call does not keep competing with the event loop for its CPU.
 *
 * pinned_cpu is written by the submitting thread (between calls) and by
 * the vCPU thread when the spread timer is due (during a call, at T5 in
 * vcpu.c): never at the same time, since the call's last event is
 * published after that and the next submit comes after it.
 */
#include "internal.h"

#include <errno.h>
#include <sched.h>
#include <sys/syscall.h>
#include <unistd.h>

/* Calls a sandbox stays unpinned after it last saw other calls in flight. */
#define PLACEMENT_COOLDOWN_CALLS 256

/* Calls in flight in the process (between a CALL command and its last
 * event), counted only for sandboxes that are colocated. */
static _Atomic int calls_in_flight;

/* A forked child has none of the parent's vCPU threads, so none of its
 * calls are in flight there. */
static void reset_in_child(void)
{
    atomic_store_explicit(&calls_in_flight, 0, memory_order_relaxed);
}

static pthread_once_t atfork_once = PTHREAD_ONCE_INIT;

static void register_atfork(void)
{
    pthread_atfork(NULL, NULL, reset_in_child);
}

void placement_thread_start(struct ab_sandbox *sb)
{
    pthread_once(&atfork_once, register_atfork);
    struct ab_placement *p = &sb->placement;
    p->tid = (pid_t)syscall(SYS_gettid);
    atomic_init(&p->pinned_cpu, -1);
    /* What the thread may run on: inherited from the creating thread. */
    if (sched_getaffinity(0, sizeof p->allowed, &p->allowed) != 0)
        CPU_ZERO(&p->allowed);
}

static void unpin(struct ab_placement *p)
{
    if (CPU_COUNT(&p->allowed))
        sched_setaffinity(p->tid, sizeof p->allowed, &p->allowed);
    atomic_store_explicit(&p->pinned_cpu, -1, memory_order_relaxed);
}

/* The submitting thread (an event loop's), pinned by us to the CPU it was
 * on, and the affinity it had before. Per thread: every sandbox that thread
 * drives shares it. */
static _Thread_local bool loop_pinned;
static _Thread_local int loop_cpu;
static _Thread_local cpu_set_t loop_allowed;

static void release_loop(void)
{
    if (loop_pinned)
        sched_setaffinity(0, sizeof loop_allowed, &loop_allowed);
    loop_pinned = false;
}

/* The CPU to put the vCPU thread on: the submitting thread's, which is
 * pinned there (by us) from the first call on. Following it unpinned does
 * not work: woken by the vCPU thread (still running on its CPU), the
 * scheduler puts the loop thread on the idle CPU, and the vCPU thread
 * would chase it at every other call (measured: about one re-pin per two
 * calls, no faster than no placement at all). */
static int loop_cpu_now(struct ab_placement *p)
{
    if (!loop_pinned) {
        int cpu = sched_getcpu();
        cpu_set_t one;
        CPU_ZERO(&one);
        CPU_SET(cpu, &one);
        if (cpu < 0 || sched_getaffinity(0, sizeof loop_allowed, &loop_allowed) ||
            sched_setaffinity(0, sizeof one, &one))
            return -1;
        loop_pinned = true;
        loop_cpu = cpu;
    }
    p->holds_loop = true;
    return loop_cpu;
}

void ab_sandbox_release_placement(ab_sandbox *sb)
{
    if (sb->placement.holds_loop && loop_pinned)
        release_loop();
    sb->placement.holds_loop = false;
}

void placement_before_call(struct ab_sandbox *sb)
{
    struct ab_placement *p = &sb->placement;
    if (sb->config.placement == AB_PLACEMENT_SCHEDULER || !p->tid)
        return;
    int pinned = atomic_load_explicit(&p->pinned_cpu, memory_order_relaxed);
    if (atomic_load_explicit(&calls_in_flight, memory_order_relaxed) > 0) {
        release_loop();
        /* Busy with others: spread, and stay spread for a while. Under a
         * steady load the count touches zero now and then; pinning at
         * each of those moments and unpinning at the next call would cost
         * two affinity changes (and migrations) per call. */
        p->cooldown = PLACEMENT_COOLDOWN_CALLS;
        if (pinned >= 0) {
            unpin(p);
            AB_COUNT(sb, unpins);
        }
        return;
    }
    if (p->cooldown) {
        p->cooldown--;
        return;
    }
    int cpu = loop_cpu_now(p);
    if (cpu < 0 || cpu == pinned || !CPU_ISSET(cpu, &p->allowed))
        return;
    cpu_set_t one;
    CPU_ZERO(&one);
    CPU_SET(cpu, &one);
    if (sched_setaffinity(p->tid, sizeof one, &one) == 0) {
        atomic_store_explicit(&p->pinned_cpu, cpu, memory_order_relaxed);
        AB_COUNT(sb, pins);
    }
}

bool placement_call_begin(struct ab_sandbox *sb)
{
    struct ab_placement *p = &sb->placement;
    if (sb->config.placement == AB_PLACEMENT_SCHEDULER || p->in_call)
        return false;
    p->in_call = true;
    atomic_fetch_add_explicit(&calls_in_flight, 1, memory_order_relaxed);
    /* Pinned: the spread timer should run. */
    return atomic_load_explicit(&p->pinned_cpu, memory_order_relaxed) >= 0;
}

void placement_call_end(struct ab_sandbox *sb)
{
    struct ab_placement *p = &sb->placement;
    if (!p->in_call)
        return;
    p->in_call = false;
    atomic_fetch_sub_explicit(&calls_in_flight, 1, memory_order_relaxed);
}

/* On the vCPU thread, when the spread timer is due (limits_check). */
void placement_spread(struct ab_sandbox *sb)
{
    struct ab_placement *p = &sb->placement;
    if (CPU_COUNT(&p->allowed))
        sched_setaffinity(0, sizeof p->allowed, &p->allowed);
    atomic_store_explicit(&p->pinned_cpu, -1, memory_order_relaxed);
    atomic_fetch_add_explicit(&sb->counters.spreads, 1, memory_order_relaxed);
    atomic_fetch_add_explicit(&ab_process_counters.spreads, 1,
                              memory_order_relaxed);
}
