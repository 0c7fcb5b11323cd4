/* The sandbox object behind the public C API: creation (validation, memory,
 * the vCPU thread), the command/completion handshake with Python, and
 * teardown. */
#include "internal.h"

#include <errno.h>
#include <linux/futex.h>
#include <poll.h>
#include <signal.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/mman.h>
#include <sys/syscall.h>
#include <unistd.h>

#define VCPU_THREAD_STACK (256 * 1024)

struct ab_counters ab_process_counters;

void memory_unmap(struct ab_sandbox *sb)
{
    if (sb->mem)
        munmap(sb->mem, sb->layout.memory_size);
    sb->mem = NULL;
}

static void free_sandbox(struct ab_sandbox *sb)
{
    limits_free(sb);
    vm_destroy(sb);
    memory_unmap(sb);
    if (sb->ih)
        ab_interrupt_release(sb->ih);
    snapshot_free_tracking(sb);
    ab_snapshot_free(sb->snapshot_result);
    free(sb);
}

static int start_thread(struct ab_sandbox *sb)
{
    pthread_attr_t attr;
    pthread_attr_init(&attr);
    pthread_attr_setstacksize(&attr, VCPU_THREAD_STACK);
    int rc = pthread_create(&sb->thread, &attr, vcpu_thread_main, sb);
    pthread_attr_destroy(&attr);
    if (rc)
        return -rc;
    sb->thread_started = true;
    return 0;
}

/* The checks shared by ab_elf_validate() and ab_sandbox_create(). */
static int validate(const struct ab_config *config, const uint8_t *elf,
                    size_t elf_len, struct ab_image *image,
                    struct ab_layout *layout, char *errbuf, size_t errlen)
{
    int rc = memory_check_config(config, errbuf, errlen);
    if (rc)
        return rc;
    rc = elf_parse(elf, elf_len, memory_image_limit(config), image, errbuf,
                   errlen);
    if (rc)
        return rc;
    return memory_layout(config, image, layout, errbuf, errlen);
}

int ab_elf_validate(const struct ab_config *config, const uint8_t *elf,
                    size_t elf_len, char *errbuf, size_t errlen)
{
    struct ab_image image;
    struct ab_layout layout;
    return validate(config, elf, elf_len, &image, &layout, errbuf, errlen);
}

int sandbox_alloc(const struct ab_config *config,
                  const struct ab_layout *layout, struct ab_sandbox **out,
                  char *errbuf, size_t errlen)
{
    *out = NULL;
    struct ab_sandbox *sb = calloc(1, sizeof *sb);
    if (!sb)
        return ab_fail(errbuf, errlen, ENOMEM, "out of memory");
    sb->config = *config;
    sb->layout = *layout;
    sb->owner_pid = getpid();
    sb->vm_fd = sb->vcpu_fd = -1;
    atomic_init(&sb->notify_fd, -1);
    int signo = SIGRTMIN + (int)config->sig_rt_min_offset;
    sb->ih = interrupt_new(config->retry_delay_ns, signo);
    if (!sb->ih) {
        free_sandbox(sb);
        return ab_fail(errbuf, errlen, ENOMEM, "out of memory");
    }
    sb->ih->counters = &sb->counters;
    *out = sb;
    return 0;
}

int sandbox_start_thread(struct ab_sandbox *sb, char *errbuf, size_t errlen)
{
    int rc = start_thread(sb);
    if (rc)
        return ab_fail(errbuf, errlen, -rc, "cannot start the vCPU thread: %s",
                       strerror(-rc));
    return 0;
}

void sandbox_free(struct ab_sandbox *sb) { free_sandbox(sb); }

int ab_sandbox_create(const struct ab_config *config, const uint8_t *elf,
                      size_t elf_len, const uint8_t image_sha256[32],
                      ab_sandbox **out, char *errbuf, size_t errlen)
{
    *out = NULL;
    int rc = kvm_fd(errbuf, errlen);
    if (rc < 0)
        return rc;
    struct ab_image image;
    struct ab_layout layout;
    rc = validate(config, elf, elf_len, &image, &layout, errbuf, errlen);
    if (rc)
        return rc;

    struct ab_sandbox *sb;
    rc = sandbox_alloc(config, &layout, &sb, errbuf, errlen);
    if (rc)
        return rc;
    /* MAP_NORESERVE: only the pages the guest touches cost anything. */
    void *mem = mmap(NULL, sb->layout.memory_size, PROT_READ | PROT_WRITE,
                     MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
    if (mem == MAP_FAILED) {
        rc = ab_fail(errbuf, errlen, errno, "cannot map %llu bytes of guest "
                     "memory: %s", (unsigned long long)sb->layout.memory_size,
                     strerror(errno));
        goto fail;
    }
    sb->mem = mem;
    memory_build(sb->mem, &sb->layout, &image, elf);
    rc = snapshot_init_tracking(sb, &image, image_sha256);
    if (rc) {
        ab_fail(errbuf, errlen, -rc, "out of memory");
        goto fail;
    }
    rc = sandbox_start_thread(sb, errbuf, errlen);
    if (rc)
        goto fail;
    *out = sb;
    return 0;
fail:
    free_sandbox(sb);
    return rc;
}

uint8_t *ab_sandbox_memory(ab_sandbox *sb) { return sb->mem; }
void ab_sandbox_layout(ab_sandbox *sb, struct ab_layout *out)
{
    *out = sb->layout;
}
struct ab_event *ab_sandbox_event(ab_sandbox *sb) { return &sb->event; }

static void send_command(struct ab_sandbox *sb, uint32_t cmd)
{
    /* seq_cst store then load of `sleeping`: pairs with wait_command(), so
     * either it sees the command or we see it asleep and wake it. */
    atomic_store(&sb->cmd, cmd);
    if (atomic_load(&sb->sleeping))
        syscall(SYS_futex, &sb->cmd, FUTEX_WAKE_PRIVATE, 1, NULL, NULL, 0);
}

static int submit(struct ab_sandbox *sb, uint32_t cmd, int notify_fd)
{
    if (notify_fd < 0)
        return -EBADF;
    bool expected = false;
    if (!atomic_compare_exchange_strong(&sb->pending, &expected, true))
        return -EBUSY;
    /* Relaxed: ordered before the command by send_command()'s seq_cst. */
    atomic_store_explicit(&sb->notify_fd, notify_fd, memory_order_relaxed);
    /* [T1] CANCEL is per call: a kill() aimed at an earlier call must not
     * affect this one. It is cleared here, on the submitting thread, and not
     * when the vCPU thread picks the command up: a cancellation that
     * arrives after submit() but before the vCPU thread runs must stop
     * this call, not be wiped out by it. */
    if (cmd == AB_CMD_CALL)
        interrupt_clear_cancel(sb->ih);
    send_command(sb, cmd);
    return 0;
}

int ab_sandbox_start(ab_sandbox *sb, int notify_fd)
{
    if (sb->started)
        return -EALREADY;
    sb->started = true;
    return submit(sb, AB_CMD_CREATE, notify_fd);
}

int ab_sandbox_inject_create_failure(ab_sandbox *sb, int step)
{
    if (step < AB_CREATE_FAIL_CPUID || step > AB_CREATE_FAIL_END)
        return -EINVAL;
    if (sb->started)
        return -EALREADY;
    /* Read by the vCPU thread after it sees the CREATE command, which
     * ab_sandbox_start() stores with seq_cst after this. */
    sb->inject_create_failure = step;
    return 0;
}

int ab_sandbox_submit(ab_sandbox *sb, uint32_t cmd, int notify_fd)
{
    if (cmd != AB_CMD_CALL && cmd != AB_CMD_RESUME)
        return -EINVAL;
    if (!sb->started)
        return -ENOTCONN;
    if (cmd == AB_CMD_CALL) { /* no limits: see ab_sandbox_submit_call() */
        if (atomic_load(&sb->pending))
            return -EBUSY;
        sb->limits.deadline_ns = sb->limits.cpu_ns = 0;
        placement_before_call(sb);
    }
    return submit(sb, cmd, notify_fd);
}

int ab_sandbox_submit_call(ab_sandbox *sb, uint64_t deadline_ns,
                           uint64_t cpu_ns, int notify_fd)
{
    if (!sb->started)
        return -ENOTCONN;
    if (atomic_load(&sb->pending))
        return -EBUSY;
    /* Read by the vCPU thread after it sees the command (send_command's
     * seq_cst store orders them). */
    sb->limits.deadline_ns = deadline_ns;
    sb->limits.cpu_ns = cpu_ns;
    placement_before_call(sb);
    return submit(sb, AB_CMD_CALL, notify_fd);
}

int ab_sandbox_submit_snapshot(ab_sandbox *sb, uint64_t input_used,
                               uint64_t output_used, int notify_fd)
{
    if (!sb->started)
        return -ENOTCONN;
    if (atomic_load(&sb->pending))
        return -EBUSY;
    sb->input_used = input_used;
    sb->output_used = output_used;
    return submit(sb, AB_CMD_SNAPSHOT, notify_fd);
}

ab_snapshot *ab_sandbox_snapshot_result(ab_sandbox *sb)
{
    if (atomic_load(&sb->pending))
        return NULL;
    struct ab_snapshot *s = sb->snapshot_result;
    sb->snapshot_result = NULL;
    return s;
}

int ab_sandbox_submit_restore(ab_sandbox *sb, const ab_snapshot *snap,
                              uint64_t input_used, uint64_t output_used,
                              int notify_fd)
{
    if (!sb->started)
        return -ENOTCONN;
    if (atomic_load(&sb->pending))
        return -EBUSY;
    /* Written before the command; the vCPU thread reads them after it sees
     * the command (send_command's seq_cst store orders them). */
    sb->restore_from = snap;
    sb->input_used = input_used;
    sb->output_used = output_used;
    return submit(sb, AB_CMD_RESTORE, notify_fd);
}

int ab_sandbox_submit_teardown(ab_sandbox *sb, int notify_fd)
{
    if (!sb->started)
        return -ENOTCONN;
    return submit(sb, AB_CMD_TEARDOWN, notify_fd);
}

int ab_sandbox_ack(ab_sandbox *sb, int notify_fd)
{
    uint64_t value;
    if (read(notify_fd, &value, sizeof value) != sizeof value)
        return errno == EAGAIN ? -EAGAIN : -errno;
    /* Acquire: pairs with publish(); the event record is complete. */
    (void)atomic_load_explicit(&sb->cmd, memory_order_acquire);
    atomic_store(&sb->pending, false);
    return (int)sb->event.kind;
}

/* Block until the vCPU thread has published the event for the command in
 * flight, killing the guest if it is still running. Only teardown uses
 * this; event loops use the non-blocking pieces instead. */
static void stop_command_in_flight(struct ab_sandbox *sb)
{
    if (!atomic_load(&sb->pending))
        return;
    while (atomic_load_explicit(&sb->cmd, memory_order_acquire) !=
           AB_CMD_IDLE) {
        ab_interrupt_kill(sb->ih);
        poll(NULL, 0, 1);
    }
}

void ab_sandbox_destroy(ab_sandbox *sb)
{
    if (!sb)
        return;
    if (getpid() != sb->owner_pid) {
        /* A forked child inherited this object but not the vCPU thread:
         * it must not signal, join or free what the parent still uses.
         * Drop only this process's mappings and descriptors. */
        if (sb->run)
            munmap(sb->run, (size_t)sb->run_size);
        if (sb->mem)
            munmap(sb->mem, sb->layout.memory_size);
        if (sb->vcpu_fd >= 0)
            close(sb->vcpu_fd);
        if (sb->vm_fd >= 0)
            close(sb->vm_fd);
        return;
    }
    if (sb->thread_started) {
        stop_command_in_flight(sb);
        /* After this no kick touches kvm_run or the thread id. */
        interrupt_set_dropped(sb->ih);
        send_command(sb, AB_CMD_STOP);
        pthread_join(sb->thread, NULL);
    } else {
        interrupt_set_dropped(sb->ih);
    }
    free_sandbox(sb);
}

static void read_counters(const struct ab_counters *c, struct ab_stats *out)
{
    out->calls = atomic_load_explicit(&c->calls, memory_order_relaxed);
    out->runs = atomic_load_explicit(&c->runs, memory_order_relaxed);
    out->cancellations =
        atomic_load_explicit(&c->cancellations, memory_order_relaxed);
    out->signals_sent =
        atomic_load_explicit(&c->signals_sent, memory_order_relaxed);
    out->stale_kicks =
        atomic_load_explicit(&c->stale_kicks, memory_order_relaxed);
    out->sys_fast = atomic_load_explicit(&c->sys_fast, memory_order_relaxed);
    out->timeouts = atomic_load_explicit(&c->timeouts, memory_order_relaxed);
    out->cpu_timeouts =
        atomic_load_explicit(&c->cpu_timeouts, memory_order_relaxed);
    out->pins = atomic_load_explicit(&c->pins, memory_order_relaxed);
    out->unpins = atomic_load_explicit(&c->unpins, memory_order_relaxed);
    out->spreads = atomic_load_explicit(&c->spreads, memory_order_relaxed);
}

void ab_sandbox_stats(ab_sandbox *sb, struct ab_stats *out)
{
    read_counters(&sb->counters, out);
}

void ab_process_stats(struct ab_stats *out)
{
    read_counters(&ab_process_counters, out);
}
