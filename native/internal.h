/* Private declarations shared by the host core's translation units. */
#ifndef AIONUB_INTERNAL_H
#define AIONUB_INTERNAL_H

#define _GNU_SOURCE
#include <linux/kvm.h>
#include <pthread.h>
#include <sched.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>
#include <time.h>

#include "aionub/abi.h"
#include "aionub/host.h"

/* ---- errors ------------------------------------------------------------- */
/* Format into a caller's error buffer; returns -err for `return fail(...)`. */
int ab_fail(char *buf, size_t len, int err, const char *fmt, ...)
    __attribute__((format(printf, 4, 5)));

/* ---- kvm.c: the process-wide /dev/kvm handle ------------------------------ */
int kvm_fd(char *errbuf, size_t errlen);      /* >= 0 or -errno             */
int kvm_vcpu_mmap_size(void);
const struct kvm_cpuid2 *kvm_supported_cpuid(void);
bool kvm_have_xsave2(void);              /* else only KVM_GET_XSAVE (4 KiB) */
bool kvm_have_sync_regs(void);           /* KVM_CAP_SYNC_REGS: regs, sregs, events */
/* The supported CPUID has FSGSBASE (leaf 7, subleaf 0, EBX bit 0): the vCPU
 * runs with CR4.FSGSBASE and the boot info says AB_BOOT_FSGSBASE. */
bool kvm_have_fsgsbase(void);
/* MSRs KVM reports in KVM_GET_MSR_INDEX_LIST, and the subset of them that
 * snapshots save and restore writes back (kvm.c documents the choice). */
const uint32_t *kvm_msr_index_list(uint32_t *n);
const uint32_t *kvm_restore_msrs(uint32_t *n);
#define AB_MAX_RESTORE_MSRS 16

/* ---- elf.c: validated loading of a guest image ---------------------------- */
#define AB_MAX_SEGMENTS 16
struct ab_segment {
    uint64_t vaddr, memsz; /* page-aligned span [vaddr, vaddr+memsz)         */
    uint64_t file_vaddr;   /* where the file bytes start (>= vaddr)          */
    uint64_t offset, filesz;
    bool writable, executable;
};
struct ab_image {
    uint64_t entry;
    uint64_t start, end; /* page-aligned span covering all segments          */
    unsigned nsegments;
    struct ab_segment segments[AB_MAX_SEGMENTS];
};
/* Parse and validate; every segment must lie in [AB_IMAGE_BASE, limit). */
int elf_parse(const uint8_t *elf, size_t len, uint64_t limit,
              struct ab_image *out, char *errbuf, size_t errlen);

/* ---- memory.c: guest memory contents and page tables ----------------------- */
int memory_check_config(const struct ab_config *cfg, char *errbuf,
                        size_t errlen);
uint64_t memory_image_limit(const struct ab_config *cfg);
int memory_layout(const struct ab_config *cfg, const struct ab_image *img,
                  struct ab_layout *out, char *errbuf, size_t errlen);
/* Write everything the guest needs before its first entry into `mem`. */
void memory_build(uint8_t *mem, const struct ab_layout *lay,
                  const struct ab_image *img, const uint8_t *elf);
struct ab_sandbox;
void memory_unmap(struct ab_sandbox *sb); /* guest memory; idempotent */

/* ---- interrupt.c: the interrupt handle -------------------------------------
 * state bits, as in the seed: CANCEL (bit 0), RUNNING (bit 1),
 * DEBUG_INTERRUPT (bit 2: pause for a debugger; see debug.c). */
#define AB_CANCEL_BIT 0x1u
#define AB_RUNNING_BIT 0x2u
#define AB_DEBUG_INTERRUPT_BIT 0x4u

struct ab_interrupt {
    _Atomic uint8_t state;
    _Atomic uint64_t tid;     /* pthread_t of the vCPU thread               */
    _Atomic bool dropped;     /* the sandbox has been destroyed             */
    _Atomic uint32_t refs;
    uint64_t retry_delay_ns;
    int signo;                /* SIGRTMIN + sig_rt_min_offset               */
    /* Serialises kicks against teardown: a kick touches `run` and `tid`
     * only while holding it and only if !dropped, so destroy (which sets
     * dropped under the lock) never races a kick into freed memory or a
     * joined thread. */
    pthread_mutex_t kick_lock;
    struct kvm_run *run;      /* for immediate_exit                         */
    uint64_t last_signal_ns;  /* when kick() last signalled (kick_lock)      */
    uint32_t lose_kicks;      /* fault injection (kick_lock)                */
    struct ab_counters *counters; /* the owning sandbox's (while !dropped) */
};
struct ab_interrupt *interrupt_new(uint64_t retry_delay_ns, int signo);
void interrupt_set_tid(struct ab_interrupt *ih);
uint8_t interrupt_set_running(struct ab_interrupt *ih); /* returns old state */
void interrupt_clear_running(struct ab_interrupt *ih);
bool interrupt_is_cancelled(struct ab_interrupt *ih);
void interrupt_clear_cancel(struct ab_interrupt *ih);
void interrupt_set_dropped(struct ab_interrupt *ih);

/* ---- vcpustate.c: the vCPU state a snapshot holds ------------------------------
 * Everything KVM exposes that the guest can observe, except guest time
 * (IA32_TSC): general, segment, control registers and descriptor tables
 * (sregs, which also carry EFER and the FS/GS bases), the whole XSAVE area
 * in KVM's user (standard) format (x87, SSE incl. MXCSR, AVX, AVX-512 and
 * any other user component the CPU has), XCR0, debug registers, pending
 * events and exceptions, the MP state and the MSRs kvm_restore_msrs()
 * lists. */
struct vcpu_state {
    struct kvm_regs regs;
    struct kvm_sregs sregs;
    struct kvm_fpu fpu;       /* the raw legacy area; see vcpustate.c       */
    struct kvm_xcrs xcrs;
    struct kvm_debugregs debugregs;
    struct kvm_vcpu_events events;
    struct kvm_mp_state mp_state;
    struct {
        struct kvm_msrs header;
        struct kvm_msr_entry entries[AB_MAX_RESTORE_MSRS];
    } msrs;
    uint32_t xsave_size;      /* bytes at `xsave`                            */
    struct kvm_xsave *xsave;
};
struct ab_sandbox;
int vcpu_state_alloc(struct vcpu_state *st, uint32_t xsave_size);
void vcpu_state_free(struct vcpu_state *st);
/* 0, or -errno with *what naming the ioctl that failed. */
int vcpu_state_get(struct ab_sandbox *sb, struct vcpu_state *st,
                   const char **what);
int vcpu_state_set(struct ab_sandbox *sb, const struct vcpu_state *st,
                   const char **what);

/* ---- signal.c: the kick signal, never delivered (N1-N4) ----------------- */
/* [N1] On a vCPU thread, at its start: block every signal. */
void kick_signal_block_all(void);
/* [N2] Unblock only `signo` for the duration of the vCPU's KVM_RUN.
 * 0 or -errno. */
int kick_signal_unblock_in_run(int vcpu_fd, int signo);
/* [N4] Take the pending kicks off the calling thread's queue. */
void kick_signal_drain(int signo);

/* ---- limits.c: a call's deadline and CPU-time budget (kernel timers) -------
 * deadline_ns and cpu_ns are written by the submitter before a CALL
 * command (ordered by the command's seq_cst store) and read by the vCPU
 * thread; everything else belongs to the vCPU thread. */
struct ab_limits {
    uint64_t deadline_ns;     /* CLOCK_MONOTONIC, absolute; 0 = none        */
    uint64_t cpu_ns;          /* CPU-time budget; 0 = none                  */
    struct ab_sandbox *sb;
    struct ab_interrupt *ih;
    timer_t wall, cpu;
    bool have_wall, have_cpu; /* created (lazily, on the vCPU thread)       */
    bool active;              /* a call with limits is in progress          */
    uint64_t cpu_since_ns;    /* thread CPU clock when the budget was last
                                 (re)armed; the guest runs since then       */
    uint64_t cpu_used_ns;     /* CPU time used in earlier stretches         */
    uint64_t cpu_check_at_ns; /* CLOCK_MONOTONIC: when the budget's sampler
                                 (the `cpu` timer) looks next               */
    bool cpu_paused;          /* an event is with Python: not counting      */
    bool wall_paused;         /* the deadline is stopped (a debugger's stop) */
    uint64_t wall_left_ns;    /* what was left of it then                   */
    uint32_t outcome;         /* 0, AB_EV_TIMEOUT or AB_EV_CPU_TIMEOUT      */
    /* The placement's spread timer (placement.c): unpins the vCPU thread
     * when a pinned call runs long. It stops nothing. */
    timer_t spread;
    bool have_spread, spread_on;
    uint64_t spread_at_ns;    /* CLOCK_MONOTONIC, when it is due            */
};
struct ab_sandbox;
void limits_bind_thread(struct ab_sandbox *sb);  /* on the vCPU thread     */
/* At a CALL: arm what the call asked for. 0, or -errno with *what set. */
int limits_begin(struct ab_sandbox *sb, const char **what);
/* An event Python answers: pause the CPU budget (and, for a debugger's
 * stop, the deadline too). */
void limits_pause(struct ab_sandbox *sb, bool deadline_too);
int limits_resume(struct ab_sandbox *sb);  /* RESUME after it              */
void limits_end(struct ab_sandbox *sb);    /* the call's last event        */
uint32_t limits_outcome(struct ab_sandbox *sb); /* why CANCEL was set, or 0 */
void limits_free(struct ab_sandbox *sb);
/* [T5] After an EINTR, on the vCPU thread: if the deadline has passed or
 * the budget is spent, do what kill() does (CANCEL) and record why; if
 * the spread timer is due, unpin. Returns whether the EINTR had a reason
 * here (a limit or the spread), i.e. was not a stale kick. */
bool limits_check(struct ab_sandbox *sb);

/* ---- placement.c: where the vCPU thread runs (config.placement) ---------- */
struct ab_placement {
    pid_t tid;                /* the vCPU thread's kernel id                */
    cpu_set_t allowed;        /* its affinity when it started               */
    _Atomic int pinned_cpu;   /* -1: not pinned                             */
    bool in_call;             /* counted in calls in flight (vCPU thread)   */
    uint32_t cooldown;        /* calls left before it may pin again (submitter) */
    bool holds_loop;          /* this sandbox's calls pinned the submitter  */
};
void placement_thread_start(struct ab_sandbox *sb); /* on the vCPU thread */
void placement_before_call(struct ab_sandbox *sb);  /* submitter, at CALL  */
/* vCPU thread, at a call's start: true if the spread timer should run. */
bool placement_call_begin(struct ab_sandbox *sb);
void placement_call_end(struct ab_sandbox *sb);
void placement_spread(struct ab_sandbox *sb); /* the spread timer fired   */

/* ---- stats ------------------------------------------------------------------ */
struct ab_counters {
    _Atomic uint64_t calls, runs, cancellations, signals_sent, stale_kicks,
        sys_fast, timeouts, cpu_timeouts, pins, unpins,
        spreads;
};
extern struct ab_counters ab_process_counters;
#define AB_COUNT(sb, field)                                                   \
    do {                                                                      \
        atomic_fetch_add_explicit(&(sb)->counters.field, 1, memory_order_relaxed); \
        atomic_fetch_add_explicit(&ab_process_counters.field, 1,              \
                                  memory_order_relaxed);                      \
    } while (0)

/* ---- vm.c / vcpu.c: the sandbox --------------------------------------------- */
#define AB_CMD_IDLE 0u
#define AB_CMD_CREATE 3u /* internal: first command, set at creation */
#define AB_CMD_STOP 4u   /* internal: leave the thread               */
#define AB_CMD_SNAPSHOT 5u
#define AB_CMD_RESTORE 6u
#define AB_CMD_TEARDOWN 7u

struct ab_sandbox {
    struct ab_config config;
    struct ab_layout layout;
    uint8_t *mem;             /* guest memory, layout.memory_size bytes      */
    int vm_fd, vcpu_fd;
    _Atomic int notify_fd;    /* eventfd to write when an event is published */
    struct kvm_run *run;
    int run_size;
    pthread_t thread;
    bool thread_started;
    bool started;             /* ab_sandbox_start() was called             */
    pid_t owner_pid;          /* the process whose thread runs the vCPU    */
    struct ab_interrupt *ih;
    /* The command word the vCPU thread waits on (futex). Python stores a
     * command; the thread stores AB_CMD_IDLE back when its event is
     * published, before it writes the eventfd. */
    _Atomic uint32_t cmd;
    _Atomic uint32_t sleeping; /* thread is (about to be) in FUTEX_WAIT    */
    /* Set by submit, cleared by ack: at most one command in flight. */
    _Atomic bool pending;
    struct ab_event event;    /* written by the vCPU thread before IDLE     */
    uint32_t xsave_size;      /* KVM_CAP_XSAVE2 on the VM fd (>= 4096)       */
    /* Snapshot bookkeeping (snapshot.c), touched only while idle. */
    uint8_t image_sha256[32]; /* identity of the guest image (SHA-256,
                                 computed by the caller)                   */
    uint64_t npages;
    uint64_t *written;        /* pages ever written (else still zero)       */
    uint64_t *dirty;          /* pages written since `base_id` was taken or
                                 restored; only meaningful if base_id != 0 */
    uint64_t base_id;         /* the snapshot memory equals, plus `dirty`   */
    bool dirty_log;           /* KVM dirty-page logging is on for memory    */
    /* Arguments and result of the SNAPSHOT/RESTORE commands. */
    const struct ab_snapshot *restore_from;
    uint64_t input_used, output_used; /* host writes since the last one   */
    /* High-water mark of the C core's own replies to fast system requests
     * in the output buffer since the last snapshot or restore (sysfast.c;
     * vCPU thread only, like the commands that read and reset it). */
    uint64_t sys_output_used;
    struct ab_snapshot *snapshot_result;
    /* A spawned sandbox's snapshot, whose vCPU state the CREATE command
     * loads (spawn.c); NULL once loaded, and for created sandboxes. */
    const struct ab_snapshot *spawn_from;
    /* Fault injection for tests (ab_sandbox_inject_unsettled): this many
     * coming settles report that KVM never settled. vCPU thread only,
     * set while idle. */
    uint32_t inject_unsettled;
    uint64_t rebuilds;        /* VMs rebuilt by restore (stats)             */
    struct ab_counters counters;
    struct ab_limits limits;  /* the current call's deadline and budget     */
    struct ab_placement placement;
    int inject_create_failure; /* AB_CREATE_FAIL_* or 0 (fault injection) */
    bool debug_enabled;       /* #BP/#DB pause for a debugger (debug.c)     */
    bool kicks_pending;       /* vCPU thread: a stopped call may have left
                                 kick signals queued (signal.c, N4)       */
    bool at_debug_stop;       /* the last event was AB_EV_DEBUG_STOP: the
                                 vCPU has no exit to complete (vCPU thread
                                 writes it before publishing)             */
};

int vm_create(struct ab_sandbox *sb, char *errbuf, size_t errlen);
/* Replace the VM and vCPU with fresh ones over the same guest memory (on
 * the vCPU thread, while idle): nothing KVM kept inside the old ones can
 * survive. The new memory slot's dirty log starts empty. */
int vm_rebuild(struct ab_sandbox *sb, char *errbuf, size_t errlen);
/* ---- snapshot.c, backing.c, spawn.c: snapshots ---------------------------- */
struct ab_snapshot {
    uint64_t id;        /* unique per process; never reused              */
    uint8_t image_sha256[32];
    struct ab_layout layout;
    uint64_t npages;
    uint64_t *present;  /* pages held in `mem` (others are zero)         */
    uint8_t *mem;       /* layout.memory_size bytes: MAP_NORESERVE
                           anonymous memory, or once shared (backing.c)
                           a read-only MAP_SHARED view of backing_fd     */
    uint64_t bytes;     /* pages held, in bytes                          */
    struct vcpu_state vcpu;
    /* The sealed memfd holding the memory image that spawned sandboxes
     * map copy-on-write (backing.c); -1 until the first spawn. */
    int backing_fd;
};
/* CLOCK_MONOTONIC in nanoseconds: the clock of deadlines, kicks' retry
 * delays and the command spin. */
static inline uint64_t mono_ns(void)
{
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return (uint64_t)t.tv_sec * 1000000000ull + (uint64_t)t.tv_nsec;
}

#define AB_BITS 64
static inline bool test_bit(const uint64_t *map, uint64_t i)
{
    return (map[i / AB_BITS] >> (i % AB_BITS)) & 1;
}
static inline void set_bit(uint64_t *map, uint64_t i)
{
    map[i / AB_BITS] |= 1ull << (i % AB_BITS);
}
static inline size_t map_words(uint64_t npages)
{
    return (npages + AB_BITS - 1) / AB_BITS;
}
uint64_t snapshot_new_id(void);
int snapshot_init_tracking(struct ab_sandbox *sb, const struct ab_image *img,
                           const uint8_t image_sha256[32]);
void snapshot_free_tracking(struct ab_sandbox *sb);
/* On the vCPU thread, for the SNAPSHOT/RESTORE commands; fill the event. */
void snapshot_take(struct ab_sandbox *sb, struct ab_event *ev);
void snapshot_restore(struct ab_sandbox *sb, struct ab_event *ev);
void vm_destroy(struct ab_sandbox *sb);
void *vcpu_thread_main(void *arg);

/* sandbox.c: the parts of creation that spawning shares. sandbox_alloc()
 * makes the object, its interrupt handle and kick signal (no memory, no
 * thread); sandbox_free() undoes whatever exists. */
int sandbox_alloc(const struct ab_config *config,
                  const struct ab_layout *layout, struct ab_sandbox **out,
                  char *errbuf, size_t errlen);
int sandbox_start_thread(struct ab_sandbox *sb, char *errbuf, size_t errlen);
void sandbox_free(struct ab_sandbox *sb);

/* backing.c: a snapshot's sealed memfd. snapshot_share() creates it from
 * the snapshot's pages (once; thread-safe); the others build one from
 * pages held elsewhere (snapfile.c). 0 or -errno. */
int snapshot_share(struct ab_snapshot *s);
int backing_create(uint64_t size, int *out_fd);
int backing_write(int fd, const uint8_t *data, uint64_t len, uint64_t off);
int backing_seal_and_view(struct ab_snapshot *s, int fd);

/* spawn.c: a layout recorded in a snapshot must be exactly the one `cfg`
 * and its image span give ("config: ..." in errbuf otherwise); the CREATE
 * command of a spawned sandbox loads the snapshot's vCPU state. */
int layout_check(const struct ab_config *cfg, const struct ab_layout *lay,
                 char *errbuf, size_t errlen);
void spawn_load_state(struct ab_sandbox *sb, struct ab_event *ev);

/* ---- debug.c: pausing the guest for a debugger ------------------------------
 * On the vCPU thread. debug_report_interrupt(): the run stopped because
 * DEBUG_INTERRUPT is set ([T2]/[T5]): fill an AB_EV_DEBUG_STOP event.
 * debug_trap(): a CPL0 stub reported `vector` with the interrupt frame
 * `frame`; if debugging is on and it is #DB or #BP, put the vCPU back at
 * CPL3 exactly where the trap left it and fill AB_EV_DEBUG_STOP; returns
 * false (a plain fault) otherwise. */
void debug_report_interrupt(struct ab_sandbox *sb, struct ab_event *ev);
bool debug_trap(struct ab_sandbox *sb, struct ab_event *ev,
                const uint64_t frame[7]);

/* ---- sysfast.c: the system requests the C core answers itself -------------
 * Called on the vCPU thread for an AB_PORT_SYS exit whose request is
 * `length` bytes (already checked against the output buffer size). */
enum sys_fast_outcome {
    SYS_FAST_SERVED,    /* reply written: re-enter the guest              */
    SYS_FAST_TO_PYTHON, /* not a fast op, or malformed: Python decides    */
    SYS_FAST_FAILED,    /* a host ioctl failed: *err = errno             */
};
enum sys_fast_outcome sys_serve_fast(struct ab_sandbox *sb, uint32_t length,
                                     int *err);

#endif
