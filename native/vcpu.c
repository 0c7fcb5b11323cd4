/* The vCPU thread: one per sandbox, created by the C core. It never runs
 * Python and never takes the GIL.
 *
 *   Python (event loop thread)            vCPU thread
 *   ──────────────────────────            ───────────
 *   write input buffer
 *   submit(CALL): [T1] clear CANCEL
 *                 cmd = CALL, FUTEX_WAKE ─▶ wait_command() returns CALL
 *                                           loop:
 *                                             [T2] set RUNNING; CANCEL? → CANCELLED
 *                                                  DEBUG_INTERRUPT? → DEBUG_STOP
 *                                             [T3] KVM_RUN ... guest runs
 *                                             [T4] clear RUNNING
 *                                             EINTR: [T5] CANCEL? → CANCELLED
 *                                                    DEBUG_INTERRUPT? → DEBUG_STOP
 *                                                    else stale kick → re-enter
 *                                             fast system request: [T7]
 *                                                    reply → re-enter (T2)
 *                                             exit → decode → event
 *                                           [T6] publish: event, cmd = IDLE,
 *   reader callback: ack() reads eventfd ◀──       write(eventfd)
 *
 * The timing points T1..T6 are the ones docs/cancellation.md refers to.
 * Hot path per call: one FUTEX_WAIT return, one KVM_RUN, one write().
 * Limits: a CALL arms the call's deadline and CPU budget (limits.c); an
 * event Python answers pauses the budget and RESUME re-arms it; the call's
 * last event disarms both. An expiring timer signals this thread, which
 * makes KVM_RUN return EINTR like a kick; at T5 the call's clocks say
 * whether a limit ran out (limits_check sets CANCEL as a kill() would),
 * and the event is then TIMEOUT or CPU_TIMEOUT instead of CANCELLED.
 * [T7] A fast system request (sysfast.c: clock, random, FS base) is served
 * here and the loop goes back to T2, which re-checks CANCEL exactly as for
 * a stale kick: a kill that lands while the reply is written is seen there
 * (it set CANCEL; RUNNING was clear, so it did not signal, and T2 reads
 * CANCEL after setting RUNNING). A guest that only makes fast requests
 * still never runs past a kill.
 */
#include "internal.h"

#include <errno.h>
#include <linux/futex.h>
#include <signal.h>
#include <stdio.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/syscall.h>
#include <time.h>
#include <unistd.h>

#define KSTACK_TOP (AB_KSTACK_ADDR + AB_KSTACK_PAGES * AB_PAGE_SIZE)

static long futex(_Atomic uint32_t *addr, int op, uint32_t val)
{
    return syscall(SYS_futex, addr, op, val, NULL, NULL, 0);
}

/* Wait for Python to hand over a command: poll for spin_ns first (cheap
 * when calls come back to back), then sleep on the futex. `sleeping` tells
 * the submitter whether a FUTEX_WAKE is needed (both sides use seq_cst so
 * one of them always sees the other). */
static uint32_t wait_command(struct ab_sandbox *sb)
{
    uint32_t cmd = atomic_load_explicit(&sb->cmd, memory_order_acquire);
    if (cmd != AB_CMD_IDLE)
        return cmd;
    if (sb->config.spin_ns) {
        uint64_t deadline = mono_ns() + sb->config.spin_ns;
        do {
            for (int i = 0; i < 64; i++) {
                __builtin_ia32_pause();
                cmd = atomic_load_explicit(&sb->cmd, memory_order_acquire);
                if (cmd != AB_CMD_IDLE)
                    return cmd;
            }
        } while (mono_ns() < deadline);
    }
    for (;;) {
        atomic_store(&sb->sleeping, 1);
        cmd = atomic_load(&sb->cmd);
        if (cmd == AB_CMD_IDLE)
            futex(&sb->cmd, FUTEX_WAIT_PRIVATE, AB_CMD_IDLE);
        atomic_store(&sb->sleeping, 0);
        cmd = atomic_load_explicit(&sb->cmd, memory_order_acquire);
        if (cmd != AB_CMD_IDLE)
            return cmd;
    }
}

static void publish(struct ab_sandbox *sb)
{
    /* Release: the event record is complete before Python can see IDLE. */
    atomic_store_explicit(&sb->cmd, AB_CMD_IDLE, memory_order_release);
    uint64_t one = 1;
    /* The eventfd counter cannot overflow (one event per command), and a
     * failed write cannot be reported to anyone but the reader, who would
     * then wait forever — so retry EINTR and nothing else can happen. */
    int fd = atomic_load_explicit(&sb->notify_fd, memory_order_relaxed);
    while (write(fd, &one, sizeof one) < 0 && errno == EINTR)
        ;
}

static void event_vm_error(struct ab_event *ev, uint32_t reason, int err,
                           uint64_t detail, const char *fmt, ...)
    __attribute__((format(printf, 5, 6)));

static void event_vm_error(struct ab_event *ev, uint32_t reason, int err,
                           uint64_t detail, const char *fmt, ...)
{
    ev->kind = AB_EV_VM_ERROR;
    ev->exit_reason = reason;
    ev->error = -err;
    ev->detail = detail;
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(ev->message, sizeof ev->message, fmt, ap);
    va_end(ap);
}

/* A CPL0 stub reported an exception: rsp -> [vector, error code, rip, cs,
 * rflags, rsp, ss], CR2 in sregs. The stub only ever runs with the
 * host-built stack, but validate anyway before reading guest memory. */
static void decode_fault(struct ab_sandbox *sb, struct ab_event *ev)
{
    struct kvm_regs r;
    struct kvm_sregs sr;
    if (ioctl(sb->vcpu_fd, KVM_GET_REGS, &r) < 0 ||
        ioctl(sb->vcpu_fd, KVM_GET_SREGS, &sr) < 0) {
        event_vm_error(ev, KVM_EXIT_IO, errno, 0, "reading the registers "
                       "failed: %s", strerror(errno));
        return;
    }
    if (r.rsp < AB_KSTACK_ADDR || r.rsp > KSTACK_TOP - 7 * 8 || (r.rsp & 7)) {
        event_vm_error(ev, KVM_EXIT_IO, 0, r.rsp,
                       "fault report with a corrupt kernel stack pointer");
        return;
    }
    uint64_t frame[7];
    memcpy(frame, sb->mem + r.rsp, sizeof frame);
    if (sb->debug_enabled && debug_trap(sb, ev, frame))
        return; /* #BP/#DB under a debugger: a pause, not a fault */
    ev->kind = AB_EV_FAULT;
    ev->vector = frame[0];
    ev->error_code = frame[1];
    ev->rip = frame[2];
    ev->address = sr.cr2;
}

static void decode_shutdown(struct ab_sandbox *sb, struct ab_event *ev)
{
    struct kvm_regs r;
    uint64_t rip = 0;
    if (ioctl(sb->vcpu_fd, KVM_GET_REGS, &r) == 0)
        rip = r.rip;
    event_vm_error(ev, KVM_EXIT_SHUTDOWN, 0, 0, "triple fault (VM shutdown)");
    ev->rip = rip;
}

/* Turn a port-I/O exit into an event. Returns false for an exit that is
 * not a hypercall at all. */
static void decode_io(struct ab_sandbox *sb, struct ab_event *ev)
{
    const struct kvm_run *run = sb->run;
    unsigned port = run->io.port;
    if (run->io.direction == KVM_EXIT_IO_OUT && run->io.size == 1 &&
        run->io.count == 1 && port == AB_PORT_FAULT) {
        decode_fault(sb, ev);
        return;
    }
    if (run->io.direction != KVM_EXIT_IO_OUT || run->io.size != 4 ||
        run->io.count != 1 || port < AB_PORT_FIRST || port > AB_PORT_LAST) {
        event_vm_error(ev, KVM_EXIT_IO, 0, port,
                       "unexpected port I/O: %s of %u byte(s) x%u on port 0x%x",
                       run->io.direction == KVM_EXIT_IO_OUT ? "out" : "in",
                       run->io.size, run->io.count, port);
        return;
    }
    /* SAFETY: data_offset is set by KVM and lies within the kvm_run page. */
    uint32_t length;
    memcpy(&length, (const uint8_t *)run + run->io.data_offset, sizeof length);
    if (length > sb->layout.output_size) {
        event_vm_error(ev, KVM_EXIT_IO, 0, length,
                       "guest claimed %u bytes in a %llu-byte output buffer",
                       length, (unsigned long long)sb->layout.output_size);
        return;
    }
    static const uint32_t kinds[] = {
        [AB_PORT_READY - AB_PORT_FIRST] = AB_EV_READY,
        [AB_PORT_RESULT - AB_PORT_FIRST] = AB_EV_RESULT,
        [AB_PORT_HOSTCALL - AB_PORT_FIRST] = AB_EV_HOSTCALL,
        [AB_PORT_LOG - AB_PORT_FIRST] = AB_EV_LOG,
        [AB_PORT_ABORT - AB_PORT_FIRST] = AB_EV_ABORT,
        [AB_PORT_SYS - AB_PORT_FIRST] = AB_EV_SYS,
    };
    ev->kind = kinds[port - AB_PORT_FIRST];
    ev->length = length;
}

static void decode_exit(struct ab_sandbox *sb, struct ab_event *ev)
{
    const struct kvm_run *run = sb->run;
    switch (run->exit_reason) {
    case KVM_EXIT_IO:
        decode_io(sb, ev);
        return;
    case KVM_EXIT_SHUTDOWN:
        decode_shutdown(sb, ev);
        return;
    case KVM_EXIT_HLT:
        event_vm_error(ev, KVM_EXIT_HLT, 0, 0, "the vCPU halted");
        return;
    case KVM_EXIT_MMIO:
        event_vm_error(ev, KVM_EXIT_MMIO, 0, run->mmio.phys_addr,
                       "%s of unbacked guest physical address 0x%llx",
                       run->mmio.is_write ? "write" : "read",
                       (unsigned long long)run->mmio.phys_addr);
        return;
    case KVM_EXIT_FAIL_ENTRY:
        event_vm_error(ev, KVM_EXIT_FAIL_ENTRY, 0,
                       run->fail_entry.hardware_entry_failure_reason,
                       "VM entry failed (hardware reason 0x%llx)",
                       (unsigned long long)
                           run->fail_entry.hardware_entry_failure_reason);
        return;
    case KVM_EXIT_INTERNAL_ERROR:
        event_vm_error(ev, KVM_EXIT_INTERNAL_ERROR, 0, run->internal.suberror,
                       "KVM internal error (suberror %u)",
                       run->internal.suberror);
        return;
    default:
        event_vm_error(ev, run->exit_reason, 0, 0,
                       "unexpected KVM exit reason %u", run->exit_reason);
        return;
    }
}

/* Run the guest until something Python must see. CANCEL persists across
 * the re-entries in here and across RESUME commands. */
static void run_until_event(struct ab_sandbox *sb)
{
    struct ab_event *ev = &sb->event;
    struct ab_interrupt *ih = sb->ih;
    memset(ev, 0, offsetof(struct ab_event, message));
    ev->message[0] = 0;
    for (;;) {
        /* [T2] RUNNING before checking CANCEL: a kill() that lands after
         * this sees RUNNING and kicks; one that landed before is seen here. */
        uint8_t old = interrupt_set_running(ih);
        if (old & (AB_CANCEL_BIT | AB_DEBUG_INTERRUPT_BIT)) {
            interrupt_clear_running(ih);
            if (old & AB_CANCEL_BIT)
                break; /* cancellation wins over a debug interrupt */
            debug_report_interrupt(sb, ev);
            return;
        }
        AB_COUNT(sb, runs);
        /* [T3] */
        int rc = ioctl(sb->vcpu_fd, KVM_RUN, 0);
        int err = errno;
        /* [T4] */
        interrupt_clear_running(ih);
        if (rc == 0) {
            decode_exit(sb, ev);
            if (ev->kind != AB_EV_SYS)
                return;
            /* [T7] */
            int sys_err = 0;
            switch (sys_serve_fast(sb, ev->length, &sys_err)) {
            case SYS_FAST_SERVED:
                ev->kind = 0;
                ev->length = 0;
                continue; /* back to T2: CANCEL is checked again */
            case SYS_FAST_FAILED:
                event_vm_error(ev, KVM_EXIT_IO, sys_err, 0,
                               "serving a system request failed: %s",
                               strerror(sys_err));
                return;
            case SYS_FAST_TO_PYTHON:
                return;
            }
            return;
        }
        if (err != EINTR && err != EAGAIN) {
            event_vm_error(ev, 0, err, 0, "KVM_RUN failed: %s", strerror(err));
            return;
        }
        /* [T5] A kick. Clear immediate_exit before looking at CANCEL: a
         * kicker sets CANCEL before immediate_exit, so a CANCEL we miss
         * here comes with a fresh immediate_exit we will not clear. */
        atomic_store_explicit((_Atomic uint8_t *)&sb->run->immediate_exit, 0,
                              memory_order_seq_cst);
        bool had_reason = limits_check(sb); /* may set CANCEL */
        if (interrupt_is_cancelled(ih))
            break;
        /* [N4] The guest is re-entered: no kick may stay pending, or the
         * next KVM_RUN would return at once. A kick sent after this
         * stays pending and stops the next KVM_RUN at once. */
        kick_signal_drain(ih->signo);
        if (ab_interrupt_is_debug_interrupted(ih)) {
            debug_report_interrupt(sb, ev); /* a pause, not a cancellation */
            return;
        }
        /* Re-enter the guest: the placement's spread timer, or a stale
         * kick. */
        if (!had_reason)
            AB_COUNT(sb, stale_kicks);
    }
    /* The call ends: kick signals it left queued are taken once its event
     * is published (vcpu_thread_main). */
    sb->kicks_pending = true;
    /* CANCEL came from a kill(), or from one of the call's limit timers,
     * which record why (limits.c). */
    uint32_t why = limits_outcome(sb);
    ev->kind = why ? why : AB_EV_CANCELLED;
    if (why == AB_EV_TIMEOUT)
        AB_COUNT(sb, timeouts);
    else if (why == AB_EV_CPU_TIMEOUT)
        AB_COUNT(sb, cpu_timeouts);
    else
        AB_COUNT(sb, cancellations);
}

/* Whether the call goes on after this event (Python answers it and
 * resumes) or this is its last one. */
static bool call_goes_on(uint32_t kind)
{
    return kind == AB_EV_HOSTCALL || kind == AB_EV_LOG || kind == AB_EV_SYS ||
           kind == AB_EV_DEBUG_STOP;
}

/* After an event of a call, before it is published: pause the CPU budget
 * while Python works, or disarm the limits for good. */
static void settle_limits(struct ab_sandbox *sb)
{
    struct ab_event *ev = &sb->event;
    if (call_goes_on(ev->kind)) {
        limits_pause(sb, ev->kind == AB_EV_DEBUG_STOP);
        return;
    }
    limits_end(sb);
    if (ev->kind == AB_EV_TIMEOUT || ev->kind == AB_EV_CPU_TIMEOUT)
        ev->detail = sb->limits.cpu_used_ns;
}

/* Arm (CALL) or re-arm (RESUME) the call's limits; false, with the event
 * published, if that failed and the guest must not run. */
static bool start_limits(struct ab_sandbox *sb, uint32_t cmd)
{
    const char *what = "timer_settime(CPU budget)";
    int rc = cmd == AB_CMD_CALL ? limits_begin(sb, &what) : limits_resume(sb);
    if (rc == 0)
        return true;
    limits_end(sb);
    memset(&sb->event, 0, sizeof sb->event);
    event_vm_error(&sb->event, 0, -rc, 0,
                   "cannot enforce the call's limits: %s failed: %s", what,
                   strerror(-rc));
    publish(sb);
    return false;
}

void *vcpu_thread_main(void *arg)
{
    struct ab_sandbox *sb = arg;
    /* [N1] Every signal is blocked here: the kick only ever interrupts
     * KVM_RUN (signal.c), and the rest goes to the application's threads. */
    kick_signal_block_all();
    pthread_setname_np(pthread_self(), "aionub-vcpu");
    /* The thread owns the vCPU for the sandbox's whole life. */
    interrupt_set_tid(sb->ih);
    limits_bind_thread(sb);
    placement_thread_start(sb);

    for (;;) {
        uint32_t cmd = wait_command(sb);
        /* A call Python abandoned while it served one of its events (a
         * host function that failed or was cancelled, a deadline that
         * passed meanwhile) never got a RESUME: whatever comes next, its
         * timers must not fire into it. */
        if (cmd != AB_CMD_RESUME)
            limits_end(sb);
        sb->at_debug_stop = false; /* any command moves the vCPU on */
        if (cmd == AB_CMD_STOP)
            break;
        if (cmd == AB_CMD_TEARDOWN) {
            /* After set_dropped no kick touches kvm_run or this thread. */
            interrupt_set_dropped(sb->ih);
            vm_destroy(sb);
            memory_unmap(sb);
            memset(&sb->event, 0, sizeof sb->event);
            sb->event.kind = AB_EV_TORN_DOWN;
            publish(sb);
            break; /* ab_sandbox_destroy() joins us and frees the rest */
        }
        if (cmd == AB_CMD_CREATE) {
            int rc = vm_create(sb, sb->event.message, sizeof sb->event.message);
            if (rc) {
                sb->event.kind = AB_EV_CREATE_FAILED;
                sb->event.error = rc;
                publish(sb);
                continue;
            }
            if (sb->spawn_from) { /* spawned: no initialisation to run */
                spawn_load_state(sb, &sb->event);
                publish(sb);
                continue;
            }
        } else if (cmd == AB_CMD_CALL || cmd == AB_CMD_RESUME) {
            if (cmd == AB_CMD_CALL)
                AB_COUNT(sb, calls);
            if (sb->run && !start_limits(sb, cmd))
                continue;
        } else if (cmd == AB_CMD_SNAPSHOT || cmd == AB_CMD_RESTORE) {
            memset(&sb->event, 0, sizeof sb->event);
            if (cmd == AB_CMD_SNAPSHOT)
                snapshot_take(sb, &sb->event);
            else
                snapshot_restore(sb, &sb->event);
            publish(sb);
            continue;
        }
        if (!sb->run) { /* creation failed; nothing to run */
            event_vm_error(&sb->event, 0, ENODEV, 0, "the VM does not exist");
            publish(sb);
            continue;
        }
        run_until_event(sb);
        sb->at_debug_stop = sb->event.kind == AB_EV_DEBUG_STOP;
        settle_limits(sb);
        publish(sb);
        if (sb->kicks_pending) {
            /* [N4] Kick signals a stopped call left queued: taken now, off
             * the stop's path and after its timers were disarmed (taking a
             * periodic timer's signal would re-arm it), so that none stays
             * queued while the sandbox idles (each counts against
             * RLIMIT_SIGPENDING). No kick of the next call can be among
             * them: kicks signal only once RUNNING is set (T2), and that
             * call's timers are armed after its command is read. */
            kick_signal_drain(sb->ih->signo);
            sb->kicks_pending = false;
        }
    }
    return NULL;
}
