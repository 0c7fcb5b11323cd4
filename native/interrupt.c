/* The interrupt handle: how any thread stops a running vCPU.
 *
 * It follows Hyperlight's LinuxInterruptHandle (state byte with CANCEL,
 * RUNNING and DEBUG_INTERRUPT bits, the vCPU thread id, `dropped`,
 * `retry_delay`, `sig_rt_min_offset`) with the same memory orderings, plus
 * kvm_run.immediate_exit: every kick sets it before signalling, so a kick
 * that lands after RUNNING is set but before the thread enters KVM_RUN is
 * not lost — KVM_RUN then returns EINTR at once (the signal, still pending
 * and unblocked only inside KVM_RUN, would make it do so too).
 *
 * All bits live in one byte, so every read-modify-write on it is totally
 * ordered: if kill()'s fetch_or(CANCEL) precedes the vCPU thread's
 * fetch_or(RUNNING), the thread sees CANCEL and never enters the guest;
 * otherwise kill() sees RUNNING and signals. docs/cancellation.md numbers
 * the timing points.
 *
 * The signal is never delivered (signal.c): it only makes KVM_RUN return
 * EINTR, whatever the application did with its disposition.
 */
#include "internal.h"

#include <errno.h>
#include <signal.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

struct ab_interrupt *interrupt_new(uint64_t retry_delay_ns, int signo)
{
    struct ab_interrupt *ih = calloc(1, sizeof *ih);
    if (!ih)
        return NULL;
    atomic_init(&ih->refs, 1);
    ih->retry_delay_ns = retry_delay_ns;
    ih->signo = signo;
    pthread_mutex_init(&ih->kick_lock, NULL);
    return ih;
}

ab_interrupt *ab_sandbox_interrupt(ab_sandbox *sb)
{
    atomic_fetch_add_explicit(&sb->ih->refs, 1, memory_order_relaxed);
    return sb->ih;
}

void ab_interrupt_release(ab_interrupt *ih)
{
    if (atomic_fetch_sub_explicit(&ih->refs, 1, memory_order_acq_rel) == 1) {
        pthread_mutex_destroy(&ih->kick_lock);
        free(ih);
    }
}

/* ---- the vCPU thread's side ------------------------------------------------- */

void interrupt_set_tid(struct ab_interrupt *ih)
{
    /* Release: pairs with the Acquire load in kick(), so a kicker that sees
     * RUNNING (set after this) also sees this tid. */
    atomic_store_explicit(&ih->tid, (uint64_t)pthread_self(),
                          memory_order_release);
}

uint8_t interrupt_set_running(struct ab_interrupt *ih)
{
    /* Release: publishes the tid store to a kicker that observes RUNNING.
     * The returned old value tells whether CANCEL was already set. */
    return atomic_fetch_or_explicit(&ih->state, AB_RUNNING_BIT,
                                    memory_order_acq_rel);
}

void interrupt_clear_running(struct ab_interrupt *ih)
{
    /* Release: everything the vCPU did is visible before RUNNING clears. */
    atomic_fetch_and_explicit(&ih->state, (uint8_t)~AB_RUNNING_BIT,
                              memory_order_release);
}

bool interrupt_is_cancelled(struct ab_interrupt *ih)
{
    /* Acquire: pairs with the Release in kill()/cancel(). */
    return atomic_load_explicit(&ih->state, memory_order_acquire) &
           AB_CANCEL_BIT;
}

void interrupt_clear_cancel(struct ab_interrupt *ih)
{
    /* Release: the previous call's effects are visible to other threads;
     * a sandbox may be driven from different threads across calls. */
    atomic_fetch_and_explicit(&ih->state, (uint8_t)~AB_CANCEL_BIT,
                              memory_order_release);
}

void interrupt_set_dropped(struct ab_interrupt *ih)
{
    pthread_mutex_lock(&ih->kick_lock);
    /* Release: teardown is visible to anyone who sees dropped via Acquire. */
    atomic_store_explicit(&ih->dropped, true, memory_order_release);
    ih->run = NULL;
    pthread_mutex_unlock(&ih->kick_lock);
}

/* ---- any thread's side ------------------------------------------------------- */

/* Whether a kick can reach the vCPU at all: the sandbox is not dropped and
 * its VM exists. vm_create() hands kvm_run to the handle only once the vCPU
 * is fully usable, and teardown takes it back (interrupt_set_dropped()).
 * Caller holds kick_lock. */
static bool kick_target_locked(const struct ab_interrupt *ih)
{
    return !atomic_load_explicit(&ih->dropped, memory_order_acquire) &&
           ih->run != NULL;
}

static bool has_kick_target(struct ab_interrupt *ih)
{
    pthread_mutex_lock(&ih->kick_lock);
    bool target = kick_target_locked(ih);
    pthread_mutex_unlock(&ih->kick_lock);
    return target;
}

/* One kick: if the vCPU is running with CANCEL or DEBUG_INTERRUPT set, set immediate_exit and
 * signal its thread. Returns whether a signal was sent.
 *
 * Real-time signals queue rather than coalesce, and in a nested VM each
 * delivery is expensive: a caller kicking in a tight loop could bury the
 * vCPU thread in pending signals. So while the previous kick is
 * unconsumed (immediate_exit still 1: the thread has not yet returned from
 * KVM_RUN with EINTR, and will) a new signal goes out only once
 * retry_delay has passed since the last one. */
int ab_interrupt_kick(ab_interrupt *ih)
{
    int sent = 0;
    pthread_mutex_lock(&ih->kick_lock);
    uint8_t state = atomic_load_explicit(&ih->state, memory_order_acquire);
    bool wanted = kick_target_locked(ih) && (state & AB_RUNNING_BIT) &&
                  (state & (AB_CANCEL_BIT | AB_DEBUG_INTERRUPT_BIT));
    if (wanted && ih->lose_kicks) {
        ih->lose_kicks--; /* injected loss: as if the signal never came */
    } else if (wanted) {
        /* SAFETY: run stays mapped while !dropped; dropped is set under
         * kick_lock before the vCPU thread is joined and run unmapped. */
        _Atomic uint8_t *immediate_exit =
            (_Atomic uint8_t *)&ih->run->immediate_exit;
        uint64_t now = mono_ns();
        bool unconsumed = atomic_exchange_explicit(immediate_exit, 1,
                                                   memory_order_acq_rel);
        /* Acquire: pairs with the Release in interrupt_set_tid(). */
        pthread_t tid =
            (pthread_t)atomic_load_explicit(&ih->tid, memory_order_acquire);
        if (unconsumed && now - ih->last_signal_ns < ih->retry_delay_ns) {
            /* the previous signal is still on its way */
        } else if (pthread_kill(tid, ih->signo) == 0) {
            ih->last_signal_ns = now;
            sent = 1;
            atomic_fetch_add_explicit(&ih->counters->signals_sent, 1,
                                      memory_order_relaxed);
            atomic_fetch_add_explicit(&ab_process_counters.signals_sent, 1,
                                      memory_order_relaxed);
        }
    }
    pthread_mutex_unlock(&ih->kick_lock);
    return sent;
}

int ab_interrupt_cancel(ab_interrupt *ih)
{
    /* Release: writes made before the kill are visible to the vCPU thread
     * when it checks CANCEL with Acquire. */
    atomic_fetch_or_explicit(&ih->state, AB_CANCEL_BIT, memory_order_release);
    return ab_interrupt_kick(ih);
}

void ab_interrupt_lose_kicks(ab_interrupt *ih, uint32_t n)
{
    pthread_mutex_lock(&ih->kick_lock);
    ih->lose_kicks = n;
    pthread_mutex_unlock(&ih->kick_lock);
}

int ab_interrupt_running(ab_interrupt *ih)
{
    return (atomic_load_explicit(&ih->state, memory_order_acquire) &
            AB_RUNNING_BIT) != 0;
}

int ab_interrupt_dropped(ab_interrupt *ih)
{
    return atomic_load_explicit(&ih->dropped, memory_order_acquire);
}

/* The seed's send_signal(): keep signalling while the vCPU runs with CANCEL
 * or DEBUG_INTERRUPT set, sleeping retry_delay between signals — and,
 * unlike the seed, only while a kick can reach it. Without a kick target
 * (the sandbox is dropped, or its VM was never created) every kick is a
 * no-op, so waiting for RUNNING to clear could only hang the caller.
 * vm_create() makes "running but no target" impossible; this condition
 * keeps kill() from spinning should it ever happen. */
static int signal_until_stopped(struct ab_interrupt *ih, int sent)
{
    struct timespec delay = {
        .tv_sec = (time_t)(ih->retry_delay_ns / 1000000000ull),
        .tv_nsec = (long)(ih->retry_delay_ns % 1000000000ull),
    };
    for (;;) {
        /* Acquire: pairs with the Release in set_running(), as in the seed. */
        uint8_t state = atomic_load_explicit(&ih->state, memory_order_acquire);
        if (!(state & AB_RUNNING_BIT) ||
            !(state & (AB_CANCEL_BIT | AB_DEBUG_INTERRUPT_BIT)) ||
            !has_kick_target(ih))
            break;
        while (nanosleep(&delay, &delay) != 0 && errno == EINTR)
            ;
        delay.tv_sec = (time_t)(ih->retry_delay_ns / 1000000000ull);
        delay.tv_nsec = (long)(ih->retry_delay_ns % 1000000000ull);
        sent |= ab_interrupt_kick(ih);
    }
    return sent;
}

int ab_interrupt_kill(ab_interrupt *ih)
{
    return signal_until_stopped(ih, ab_interrupt_cancel(ih));
}

/* ---- the debug interrupt (seed: kill_from_debugger) --------------------------
 * DEBUG_INTERRUPT asks the vCPU to *pause* for a debugger, not to stop the
 * call. The vCPU thread reports AB_EV_DEBUG_STOP where it would report
 * AB_EV_CANCELLED for CANCEL ([T2], [T5]); when both bits are set,
 * cancellation wins. The bit stays set until clear_debug_interrupt(): the
 * thread never clears it itself, so the pause it asked for is seen by
 * whoever resumes the guest (the debugger, or the engine without one). */

int ab_interrupt_debug_interrupt(ab_interrupt *ih)
{
    /* Release: as in the seed's kill_from_debugger(). */
    atomic_fetch_or_explicit(&ih->state, AB_DEBUG_INTERRUPT_BIT,
                             memory_order_release);
    return ab_interrupt_kick(ih);
}

int ab_interrupt_kill_from_debugger(ab_interrupt *ih)
{
    return signal_until_stopped(ih, ab_interrupt_debug_interrupt(ih));
}

int ab_interrupt_is_debug_interrupted(ab_interrupt *ih)
{
    /* Acquire: pairs with the Release in kill_from_debugger(). */
    return (atomic_load_explicit(&ih->state, memory_order_acquire) &
            AB_DEBUG_INTERRUPT_BIT) != 0;
}

void ab_interrupt_clear_debug_interrupt(ab_interrupt *ih)
{
    /* Release: as in the seed. */
    atomic_fetch_and_explicit(&ih->state, (uint8_t)~AB_DEBUG_INTERRUPT_BIT,
                              memory_order_release);
}
