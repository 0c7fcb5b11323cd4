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
#define AB_EV_TIMEOUT 14     /* the call's deadline passed (a kernel timer set
                                CANCEL and kicked): detail = CPU ns the
                                guest used in the call if it had a budget  */
#define AB_EV_CPU_TIMEOUT 15 /* the call's CPU-time budget ran out; detail =
                                CPU ns the guest used in the call          */
#define AB_EV_SYS 13         /* guest made a system request (AB_PORT_SYS) that
                                the C core does not serve itself: Python
                                writes the reply and resumes                  */
/* 14 and 15 are the deadline outcomes (kernel timer, CPU-time limit).      */
#define AB_EV_DEBUG_STOP 16  /* the guest paused for a debugger: `vector` is
                                the AB_STOP_* reason, `rip` the guest's
                                instruction pointer. Resume with RESUME;
                                the call is not over and not poisoned     */

/* Reasons of an AB_EV_DEBUG_STOP (event.vector). */
#define AB_STOP_INTERRUPT 1  /* DEBUG_INTERRUPT was set (kill_from_debugger) */
#define AB_STOP_BREAKPOINT 2 /* int3 (#BP); rip is the byte after the int3   */
#define AB_STOP_STEP 3       /* #DB: a single step (RFLAGS.TF) completed     */

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
    uint32_t placement;      /* AB_PLACEMENT_* (native/placement.c)            */
    uint64_t spread_ns;      /* COLOCATE: unpin a call running this long       */
};
#define AB_PLACEMENT_SCHEDULER 0 /* the scheduler alone decides               */
#define AB_PLACEMENT_COLOCATE 1  /* while no other call is in flight, pin the
                                    submitting thread and the vCPU thread to
                                    the submitting thread's CPU; unpin a call
                                    that runs longer than spread_ns
                                    (native/placement.c)                    */

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
    uint64_t sys_fast;         /* system requests the C core served on the
                                  vCPU thread (AB_SYS_CLOCK, _RANDOM, _SET_FS)
                                  without waking Python                       */
    uint64_t timeouts;         /* calls stopped by their kernel deadline       */
    uint64_t cpu_timeouts;     /* calls stopped by their CPU-time budget       */
    uint64_t pins;             /* COLOCATE: vCPU thread pinned to a new CPU    */
    uint64_t unpins;           /* COLOCATE: unpinned (other calls in flight)   */
    uint64_t spreads;          /* COLOCATE: unpinned by a long call            */
};

/* Open /dev/kvm (once per process) and check the API. 0 or -errno; errbuf
 * says what failed. */
int ab_kvm_probe(char *errbuf, size_t errlen);

/* Validate the config and the ELF, lay out and fill guest memory, and start
 * the vCPU thread. `image_sha256` is the SHA-256 digest of the ELF (the
 * caller computes it; Python's hashlib): the image's identity, which
 * restore compares with a snapshot's. ab_sandbox_start() then has the thread create the VM and
 * run the guest to READY; the result arrives as an event (READY,
 * CREATE_FAILED, or a failure of the guest's initialisation). -EINVAL: bad config or ELF (errbuf says why,
 * prefixed "config:" or "elf:"); other -errno: system failure. */
int ab_sandbox_create(const struct ab_config *config, const uint8_t *elf,
                      size_t elf_len, const uint8_t image_sha256[32],
                      ab_sandbox **out, char *errbuf, size_t errlen);

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
/* Start a call (AB_CMD_CALL) with limits the kernel enforces (native/
 * limits.c): `deadline_ns` is an absolute CLOCK_MONOTONIC time (0 = none),
 * `cpu_ns` a budget of CPU time the guest may use in this call, host
 * functions excluded (0 = none). When one runs out the vCPU thread stops
 * the guest through the interrupt handle's protocol and reports
 * AB_EV_TIMEOUT or AB_EV_CPU_TIMEOUT; a kill() that came first stays
 * AB_EV_CANCELLED. If a timer cannot be armed the call does not start:
 * AB_EV_VM_ERROR with the reason. */
int ab_sandbox_submit_call(ab_sandbox *sb, uint64_t deadline_ns,
                           uint64_t cpu_ns, int notify_fd);
/* COLOCATE: give the calling thread back the CPU affinity it had before
 * this sandbox's calls pinned it (call it on the thread that submitted
 * them, when closing the sandbox). A no-op otherwise. */
void ab_sandbox_release_placement(ab_sandbox *sb);

/* Consume the notification on `notify_fd`: returns the event kind (> 0) once
 * the vCPU thread has published the event for the last command, -EAGAIN if
 * it has not yet. The event record stays valid until the next submit. */
int ab_sandbox_ack(ab_sandbox *sb, int notify_fd);

void ab_sandbox_stats(ab_sandbox *sb, struct ab_stats *out);
void ab_process_stats(struct ab_stats *out);

/* Snapshots: guest memory and the whole vCPU state (see struct vcpu_state
 * in native/internal.h and docs/security.md) of an idle sandbox. A snapshot may be restored
 * into any sandbox of the same guest image and layout, any number of times.
 * Restoring into the sandbox that took it (the common case) copies back
 * only the pages written since (KVM dirty-page log plus the host's own
 * writes to the input/output buffers, which Python reports as
 * `input_used`/`output_used` high-water marks; the C core adds its own
 * replies to fast system requests itself).
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
/* The SHA-256 digest of the guest image the snapshot was taken from. */
void ab_snapshot_image_sha256(const ab_snapshot *snap, uint8_t out[32]);

/* Spawning: a new sandbox whose guest memory is the snapshot's, mapped
 * copy-on-write from one sealed memfd that every sandbox spawned from it
 * shares (created at the first spawn; the snapshot's own copy is then
 * replaced by a read-only view of it), and whose vCPU starts in the
 * snapshot's state: no guest initialisation runs. The config's memory
 * options must be the ones the snapshot was taken with (-EINVAL, errbuf
 * "config: ..."). ab_sandbox_start() then has the vCPU thread create the
 * VM and load the vCPU state: AB_EV_SPAWNED, or AB_EV_CREATE_FAILED with
 * event.error and event.message (KVM refused the state, say). The snapshot
 * must stay alive until that event. */
#define AB_EV_SPAWNED 20
int ab_sandbox_spawn(const struct ab_config *config, ab_snapshot *snap,
                     ab_sandbox **out, char *errbuf, size_t errlen);

/* A snapshot's parts, for snapshot files (native/snapfile.c describes the
 * vCPU state record). The page map has a bit per page of guest memory
 * (LSB first, 64-bit words): set for the pages the snapshot holds, which
 * ab_snapshot_memory() (layout.memory_size bytes, read only) has at their
 * guest addresses; the others are zero. */
size_t ab_snapshot_state_size(const ab_snapshot *snap);
int ab_snapshot_export_state(const ab_snapshot *snap, uint8_t *out, size_t len);
size_t ab_snapshot_present_size(const ab_snapshot *snap);
void ab_snapshot_present(const ab_snapshot *snap, uint8_t *out);
const uint8_t *ab_snapshot_memory(const ab_snapshot *snap);
void ab_snapshot_layout(const ab_snapshot *snap, struct ab_layout *out);
/* A snapshot from its parts, every one of them checked (-EINVAL with the
 * reason in errbuf); `pages` holds the held pages in page order. The
 * result is already shared (spawning needs no copy). */
int ab_snapshot_import(const struct ab_layout *layout,
                       const uint8_t image_sha256[32], const uint8_t *state,
                       size_t state_len, const uint8_t *present,
                       size_t present_len, const uint8_t *pages,
                       size_t pages_len, ab_snapshot **out, char *errbuf,
                       size_t errlen);
/* Fault injection for tests: the next `n` settles (the vCPU must complete
 * its last exit before its state is read or written) report that KVM kept
 * asking for more I/O, so restore takes its fallback and rebuilds the VM
 * and vCPU. Only while idle. */
void ab_sandbox_inject_unsettled(ab_sandbox *sb, uint32_t n);
/* How many times restore rebuilt the VM. */
uint64_t ab_sandbox_rebuilds(ab_sandbox *sb);

/* ---- vCPU state dump, for tests and debugging ------------------------------
 * ab_sandbox_read_state() reads everything KVM exposes about the vCPU of an
 * idle sandbox, with its own ioctls on the calling thread (independent of
 * the snapshot code): the structures below mirror KVM's (struct kvm_regs,
 * kvm_sregs, kvm_fpu, kvm_vcpu_events, kvm_debugregs, kvm_xcrs) byte for
 * byte, reserved and padding fields included, so that a difference
 * anywhere shows up as a named field. MSRs: every index in
 * KVM_GET_MSR_INDEX_LIST plus the architectural ones KVM answers but
 * leaves out of that list (EFER, FS_BASE, GS_BASE, TSC_AUX); `ok` is 0 for
 * an MSR KVM refused to read. The XSAVE area (KVM_GET_XSAVE2, standard
 * format) goes to a separate buffer of ab_sandbox_xsave_size() bytes;
 * ab_xsave_components() gives its layout from the guest's CPUID leaf 0xD.
 * Only while no command is in flight (-EBUSY otherwise); it does not
 * settle the vCPU, so it reports the state exactly as KVM holds it. */
#define AB_MAX_MSRS 512
struct ab_kvm_regs {
    uint64_t rax, rbx, rcx, rdx, rsi, rdi, rsp, rbp;
    uint64_t r8, r9, r10, r11, r12, r13, r14, r15;
    uint64_t rip, rflags;
};
struct ab_kvm_segment {
    uint64_t base;
    uint32_t limit;
    uint16_t selector;
    uint8_t type, present, dpl, db, s, l, g, avl, unusable, padding;
};
struct ab_kvm_dtable {
    uint64_t base;
    uint16_t limit;
    uint16_t padding[3];
};
struct ab_kvm_sregs {
    struct ab_kvm_segment cs, ds, es, fs, gs, ss, tr, ldt;
    struct ab_kvm_dtable gdt, idt;
    uint64_t cr0, cr2, cr3, cr4, cr8, efer, apic_base;
    uint64_t interrupt_bitmap[4];
};
struct ab_kvm_fpu {
    uint8_t fpr[8][16];
    uint16_t fcw, fsw;
    uint8_t ftwx, pad1;
    uint16_t last_opcode;
    uint64_t last_ip, last_dp;
    uint8_t xmm[16][16];
    uint32_t mxcsr, pad2;
};
struct ab_kvm_events_exception {
    uint8_t injected, nr, has_error_code, pending;
    uint32_t error_code;
};
struct ab_kvm_events_interrupt { uint8_t injected, nr, soft, shadow; };
struct ab_kvm_events_nmi { uint8_t injected, pending, masked, pad; };
struct ab_kvm_events_smi { uint8_t smm, pending, smm_inside_nmi, latched_init; };
struct ab_kvm_events_triple_fault { uint8_t pending; };
struct ab_kvm_vcpu_events {
    struct ab_kvm_events_exception exception;
    struct ab_kvm_events_interrupt interrupt;
    struct ab_kvm_events_nmi nmi;
    uint32_t sipi_vector;
    uint32_t flags;
    struct ab_kvm_events_smi smi;
    struct ab_kvm_events_triple_fault triple_fault;
    uint8_t reserved[26];
    uint8_t exception_has_payload;
    uint64_t exception_payload;
};
struct ab_kvm_debugregs {
    uint64_t db[4];
    uint64_t dr6, dr7, flags;
    uint64_t reserved[9];
};
struct ab_kvm_xcr { uint32_t xcr, reserved; uint64_t value; };
struct ab_kvm_xcrs {
    uint32_t nr_xcrs, flags;
    struct ab_kvm_xcr xcrs[16];
    uint64_t padding[16];
};
struct ab_msr_value { uint32_t index; uint32_t ok; uint64_t value; };
struct ab_vcpu_state {
    struct ab_kvm_regs regs;
    struct ab_kvm_sregs sregs;
    struct ab_kvm_fpu fpu;
    struct ab_kvm_vcpu_events events;
    struct ab_kvm_debugregs debugregs;
    struct ab_kvm_xcrs xcrs;
    uint32_t mp_state;
    uint32_t nmsrs;
    struct ab_msr_value msrs[AB_MAX_MSRS];
};
struct ab_xsave_component {
    uint32_t index;  /* XSAVE state component (2 = AVX, 5 = opmask, ...)   */
    uint32_t offset; /* in the standard-format area (CPUID 0xD.i ebx)     */
    uint32_t size;   /* bytes (CPUID 0xD.i eax)                            */
};
int ab_sandbox_read_state(ab_sandbox *sb, struct ab_vcpu_state *out,
                          uint8_t *xsave, size_t xsave_len);
size_t ab_sandbox_xsave_size(ab_sandbox *sb);
/* Copy KVM_GET_MSR_INDEX_LIST (or the MSRs restore writes back) into `out`;
 * the count, -ENOSPC if more than `max`, or -errno if KVM is unusable. */
int ab_msr_index_list(uint32_t *out, uint32_t max);
int ab_restore_msr_list(uint32_t *out, uint32_t max);
/* The user XSAVE components beyond x87/SSE (whose legacy region is fixed
 * by the architecture); count, -ENOSPC or -errno. */
int ab_xsave_components(struct ab_xsave_component *out, uint32_t max);

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
/* The seed's debug interrupt. kill_from_debugger(): set DEBUG_INTERRUPT,
 * then signal until the vCPU is not running (blocks, like kill()). The
 * vCPU thread then reports AB_EV_DEBUG_STOP instead of CANCELLED (CANCEL
 * wins when both are set). The bit stays set until
 * clear_debug_interrupt(). debug_interrupt() is the non-blocking piece
 * for event loops: set the bit and kick once (re-kick with kick()). */
int ab_interrupt_kill_from_debugger(ab_interrupt *ih);
int ab_interrupt_debug_interrupt(ab_interrupt *ih);
int ab_interrupt_is_debug_interrupted(ab_interrupt *ih);
void ab_interrupt_clear_debug_interrupt(ab_interrupt *ih);
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

/* ---- debugging (native/debug.c) ---------------------------------------------
 * ab_sandbox_enable_debug(): before ab_sandbox_start(); from then on #BP
 * (int3) and #DB (single step) in the guest pause it with AB_EV_DEBUG_STOP
 * instead of ending the call with a fault. Without it they stay faults.
 * The rest work only while no command is in flight (-EBUSY), on the
 * calling thread:
 * - guest_regs(): the guest's CPL3 registers. After a fault (the vCPU
 *   stopped in a CPL0 stub) rip, rsp and rflags come from the exception
 *   frame and cs/ss from it; `in_stub` says so.
 * - set_guest_regs(): only at a debug stop (-EPERM otherwise: another
 *   exit's completion is pending).
 * - guest_fxsave(): the 512-byte legacy XSAVE region (x87, MXCSR, XMM).
 * - debug_write(): write guest physical memory and mark the pages written
 *   for snapshots (-EFAULT outside guest memory). */
int ab_sandbox_enable_debug(ab_sandbox *sb);
int ab_sandbox_guest_regs(ab_sandbox *sb, struct ab_kvm_regs *regs,
                          struct ab_kvm_sregs *sregs, int *in_stub);
int ab_sandbox_set_guest_regs(ab_sandbox *sb, const struct ab_kvm_regs *regs);
int ab_sandbox_guest_fxsave(ab_sandbox *sb, uint8_t out[512]);
int ab_sandbox_debug_write(ab_sandbox *sb, uint64_t gpa, const uint8_t *data,
                           size_t len);
/* CDEF END */

#endif
