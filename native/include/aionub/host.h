/*
 * The host core's public C API: everything Python may call. The cffi build
 * script (native/build_ffi.py) reads the declarations between the CDEF markers
 * below, so this header is the single source of the binding; keep that region
 * free of preprocessor logic other than integer #defines.
 *
 * Conventions: functions return 0 (or a non-negative value) on success and
 * -errno on failure; human-readable detail goes to an error buffer or to the
 * sandbox's event record.
 */
#ifndef AIONUB_HOST_H
#define AIONUB_HOST_H

#include <stddef.h>
#include <stdint.h>

/* CDEF BEGIN */
typedef struct ab_sandbox ab_sandbox;
typedef struct ab_interrupt ab_interrupt;

/* Commands for ab_sandbox_submit(). */
#define AB_CMD_CALL 1   /* start a call: clears CANCEL, then runs the vCPU   */
#define AB_CMD_RESUME 2 /* continue the current call (after a host call or
                           log record); CANCEL persists                     */

/* Event kinds reported by the vCPU thread (struct ab_event.kind). */
#define AB_EV_READY 1        /* guest initialised (creation finished)          */
#define AB_EV_RESULT 2       /* guest finished a call                          */
#define AB_EV_HOSTCALL 3     /* guest waits for a host function                */
#define AB_EV_LOG 4          /* guest emitted a log record                     */
#define AB_EV_ABORT 5        /* guest aborted                                  */
#define AB_EV_FAULT 6        /* CPU exception in the guest                     */
#define AB_EV_CANCELLED 7    /* the run stopped because CANCEL was set         */
#define AB_EV_VM_ERROR 8     /* unexpected exit or KVM failure (see fields)    */
#define AB_EV_CREATE_FAILED 9 /* VM creation failed; error = -errno            */

/* A copy of a KVM exit reason that Python maps to an exception. */
#define AB_EXIT_SHUTDOWN 8
#define AB_EXIT_MMIO 6

struct ab_config {
    uint64_t memory_size;    /* bytes of guest memory                          */
    uint64_t stack_size;     /* bytes of guest stack (below it: a guard page)  */
    uint64_t input_size;     /* bytes of the host -> guest buffer              */
    uint64_t output_size;    /* bytes of the guest -> host buffer              */
    uint64_t retry_delay_ns; /* InterruptHandle.kill(): delay between signals  */
    uint32_t sig_rt_min_offset; /* kick signal = SIGRTMIN + offset             */
    uint32_t spin_ns;        /* vCPU thread polls for the next command this long
                                before sleeping on its futex (0 = no polling)  */
};

struct ab_layout {
    uint64_t memory_size;
    uint64_t image_start, image_end;
    uint64_t input_addr, input_size;
    uint64_t output_addr, output_size;
    uint64_t heap_addr, heap_size;
    uint64_t guard_addr;
    uint64_t stack_addr, stack_size;
    uint64_t entry;
};

struct ab_event {
    uint32_t kind;        /* AB_EV_*                                           */
    uint32_t length;      /* hypercall exits: bytes the guest wrote (eax),
                             already checked against the output buffer size   */
    int32_t error;        /* VM_ERROR / CREATE_FAILED: -errno, or 0            */
    uint32_t exit_reason; /* VM_ERROR: the KVM exit reason, or 0               */
    uint64_t detail;      /* VM_ERROR: suberror / hardware reason / MMIO addr  */
    uint64_t vector;      /* FAULT: CPU exception vector                       */
    uint64_t error_code;  /* FAULT: error code pushed by the CPU, or 0         */
    uint64_t rip;         /* FAULT / SHUTDOWN: guest instruction pointer        */
    uint64_t address;     /* FAULT: CR2 (the faulting address for #PF)         */
    char message[200];    /* VM_ERROR / CREATE_FAILED: what happened           */
};

struct ab_stats {
    uint64_t calls;            /* CALL commands run                            */
    uint64_t runs;             /* KVM_RUN ioctls issued                        */
    uint64_t cancellations;    /* runs that ended with AB_EV_CANCELLED         */
    uint64_t signals_sent;     /* kick signals sent to the vCPU thread         */
    uint64_t stale_kicks;      /* EINTR without CANCEL: guest re-entered       */
    uint64_t handler_reinstalls; /* kick handler found replaced (SIG_DFL,
                                    SIG_IGN, another handler) and re-installed
                                    before a kick or at creation               */
};

/* Open /dev/kvm (once per process) and check the API. 0 or -errno; errbuf
 * says what failed. */
int ab_kvm_probe(char *errbuf, size_t errlen);

/* Validate the config and the ELF, lay out and fill guest memory, and start
 * the vCPU thread. ab_sandbox_start() then has the thread create the VM and
 * run the guest to READY; the result arrives as an event (READY,
 * CREATE_FAILED, or a failure of the guest's initialisation). -EINVAL: bad config or ELF (errbuf says why,
 * prefixed "config:" or "elf:"); other -errno: system failure. */
int ab_sandbox_create(const struct ab_config *config, const uint8_t *elf,
                      size_t elf_len, ab_sandbox **out, char *errbuf,
                      size_t errlen);

/* Validate a guest ELF against a config without creating anything: the
 * same checks ab_sandbox_create() makes (for fuzzing and tooling). 0 or
 * -EINVAL with the reason in errbuf ("config: ..." or "elf: ..."). */
int ab_elf_validate(const struct ab_config *config, const uint8_t *elf,
                    size_t elf_len, char *errbuf, size_t errlen);

/* Stop the vCPU (killing a running call), join its thread, free everything.
 * Blocks until the vCPU thread has exited; after ab_sandbox_submit_teardown's
 * event that is immediate. */
void ab_sandbox_destroy(ab_sandbox *sb);

/* Have the vCPU thread itself tear the VM down (close the vCPU and VM,
 * unmap kvm_run and guest memory: about half a millisecond here), report
 * AB_EV_TORN_DOWN on notify_fd and exit, so an event loop can close a
 * sandbox without blocking. Python must drop its views of guest memory
 * first. ab_sandbox_destroy() then only joins and frees. -EBUSY if a
 * command is in flight. */
#define AB_EV_TORN_DOWN 12
int ab_sandbox_submit_teardown(ab_sandbox *sb, int notify_fd);

uint8_t *ab_sandbox_memory(ab_sandbox *sb);
void ab_sandbox_layout(ab_sandbox *sb, struct ab_layout *out);
struct ab_event *ab_sandbox_event(ab_sandbox *sb);

/* Hand the vCPU thread a command; when its event is published the thread
 * writes 1 to the eventfd `notify_fd` (each event loop that drives the
 * sandbox has its own). -EBUSY if the previous command has not been
 * acknowledged yet. The creation command notifies the fd given here too. */
int ab_sandbox_submit(ab_sandbox *sb, uint32_t cmd, int notify_fd);
int ab_sandbox_start(ab_sandbox *sb, int notify_fd); /* run creation */

/* Consume the notification on `notify_fd`: returns the event kind (> 0) once
 * the vCPU thread has published the event for the last command, -EAGAIN if
 * it has not yet. The event record stays valid until the next submit. */
int ab_sandbox_ack(ab_sandbox *sb, int notify_fd);

void ab_sandbox_stats(ab_sandbox *sb, struct ab_stats *out);
void ab_process_stats(struct ab_stats *out);

/* Snapshots: guest memory and vCPU state (general, special, FPU/SSE
 * registers, pending events) of an idle sandbox. A snapshot may be restored
 * into any sandbox of the same guest image and layout, any number of times.
 * Restoring into the sandbox that took it (the common case) copies back
 * only the pages written since (KVM dirty-page log plus the host's own
 * writes to the input/output buffers, which Python reports as
 * `input_used`/`output_used` high-water marks).
 *
 * Both run on the vCPU thread, as commands: KVM completes the last exit's
 * port I/O only on the next KVM_RUN, which must come from that thread, and
 * the vCPU state is consistent only after it. Submit, then wait for the
 * event like a call: AB_EV_SNAPSHOT (then take the result with
 * ab_sandbox_snapshot_result) or AB_EV_RESTORED; on failure event.error is
 * -errno and event.message says why (-EINVAL: wrong image or layout). */
#define AB_EV_SNAPSHOT 10
#define AB_EV_RESTORED 11
typedef struct ab_snapshot ab_snapshot;
int ab_sandbox_submit_snapshot(ab_sandbox *sb, uint64_t input_used,
                               uint64_t output_used, int notify_fd);
ab_snapshot *ab_sandbox_snapshot_result(ab_sandbox *sb); /* once, or NULL */
int ab_sandbox_submit_restore(ab_sandbox *sb, const ab_snapshot *snap,
                              uint64_t input_used, uint64_t output_used,
                              int notify_fd);
void ab_snapshot_free(ab_snapshot *snap);
uint64_t ab_snapshot_bytes(const ab_snapshot *snap); /* memory it holds */

/* Interrupt handles (seed semantics). Each handle is reference counted and
 * outlives its sandbox safely. */
ab_interrupt *ab_sandbox_interrupt(ab_sandbox *sb); /* new reference */
void ab_interrupt_release(ab_interrupt *ih);
/* Set CANCEL, then signal until the vCPU is not running, sleeping
 * retry_delay between signals. True if a signal was sent. Blocks; returns
 * at once if there is nothing a signal could stop (the sandbox is closed or
 * its VM was never created). */
int ab_interrupt_kill(ab_interrupt *ih);
/* Non-blocking pieces of kill() for event loops: set CANCEL and kick once;
 * then kick() again from a timer while running() is true. Each returns
 * whether a signal was sent. */
int ab_interrupt_cancel(ab_interrupt *ih);
int ab_interrupt_kick(ab_interrupt *ih);
int ab_interrupt_running(ab_interrupt *ih);
int ab_interrupt_dropped(ab_interrupt *ih);
/* Fault injection for tests: the next `n` kicks do nothing at all (neither
 * immediate_exit nor a signal), as if the signal had been lost, so only
 * the retries can stop the vCPU. */
void ab_interrupt_lose_kicks(ab_interrupt *ih, uint32_t n);
/* Fault injection for tests: the VM creation that ab_sandbox_start() runs
 * fails at `step`, every one of them after kvm_run is mapped. Call between
 * ab_sandbox_create() and ab_sandbox_start(). 0, -EINVAL (unknown step) or
 * -EALREADY (already started). */
#define AB_CREATE_FAIL_CPUID 1     /* KVM_SET_CPUID2 fails (EIO)              */
#define AB_CREATE_FAIL_REGISTERS 2 /* KVM_SET_REGS fails (EIO)                */
#define AB_CREATE_FAIL_END 3       /* every step succeeds, then vm_create
                                      fails before the vCPU is usable (EIO)   */
int ab_sandbox_inject_create_failure(ab_sandbox *sb, int step);
/* CDEF END */

#endif
