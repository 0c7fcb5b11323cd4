/* The "fast" system requests (AB_SYS_CLOCK, AB_SYS_RANDOM, AB_SYS_SET_FS):
 * answered by the C core on the vCPU thread, which then re-enters the
 * guest without waking Python (vcpu.c, run_until_event). Everything else,
 * and every fast request whose length is not exactly its operands', goes
 * to Python as AB_EV_SYS: Python names the protocol violation
 * (GuestProtocolError) in one place for all ops.
 *
 * The guest is stopped while this runs (one vCPU, and this is its thread),
 * so the request cannot change under us; it is still copied out before
 * use. Replies are written at the start of the output buffer; their extent
 * is remembered in sb->sys_output_used because KVM's dirty log does not
 * see the host's writes (snapshot.c folds it in like Python's
 * output_used). */
#include "internal.h"

#include <errno.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/random.h>
#include <time.h>

#define MSR_FS_BASE 0xc0000100u
#define HEADER AB_SYS_REPLY_HEADER

static uint8_t *output(struct ab_sandbox *sb)
{
    return sb->mem + sb->layout.output_addr;
}

/* result:i64, then `data_len` bytes the caller already put after it. */
static void reply(struct ab_sandbox *sb, int64_t result, uint64_t data_len)
{
    memcpy(output(sb), &result, sizeof result);
    uint64_t used = HEADER + data_len;
    if (used > sb->sys_output_used)
        sb->sys_output_used = used;
}

/* Linux clock ids the guest may ask for, mapped to the host's clocks. The
 * CPU-time clocks measure the vCPU thread (the guest's own time, including
 * what it spends in KVM_RUN), never the host process. */
static int host_clock(uint32_t linux_id, clockid_t *out)
{
    switch (linux_id) {
    case 0: *out = CLOCK_REALTIME; return 0;
    case 1: *out = CLOCK_MONOTONIC; return 0;
    case 2: /* PROCESS_CPUTIME_ID: the guest is one thread */
    case 3: *out = CLOCK_THREAD_CPUTIME_ID; return 0;
    case 4: *out = CLOCK_MONOTONIC_RAW; return 0;
    case 5: *out = CLOCK_REALTIME_COARSE; return 0;
    case 6: *out = CLOCK_MONOTONIC_COARSE; return 0;
    case 7: *out = CLOCK_BOOTTIME; return 0;
    default: return -EINVAL; /* alarms, TAI, dynamic (fd) clocks, garbage */
    }
}

static void serve_clock(struct ab_sandbox *sb, uint32_t id)
{
    clockid_t clk;
    struct timespec t;
    if (host_clock(id, &clk) < 0)
        return reply(sb, -EINVAL, 0);
    if (clock_gettime(clk, &t) < 0)
        return reply(sb, -errno, 0);
    int64_t v[2] = {(int64_t)t.tv_sec, (int64_t)t.tv_nsec};
    memcpy(output(sb) + HEADER, v, sizeof v);
    reply(sb, 0, sizeof v);
}

static void serve_random(struct ab_sandbox *sb, uint32_t len)
{
    uint64_t n = len;
    if (n > sb->layout.output_size - HEADER)
        n = sb->layout.output_size - HEADER;
    uint8_t *dst = output(sb) + HEADER;
    uint64_t got = 0;
    /* getrandom(2) never blocks once the pool is initialised and returns
     * up to 256 bytes whole; a larger read may come back short if a kick
     * signal lands, which the guest sees as a short read (allowed). */
    while (got < n) {
        ssize_t r = getrandom(dst + got, n - got, 0);
        if (r < 0) {
            if (errno == EINTR && got == 0)
                continue; /* run_until_event re-checks CANCEL right after */
            if (errno == EINTR)
                break;
            return reply(sb, -errno, 0);
        }
        got += (uint64_t)r;
    }
    reply(sb, (int64_t)got, got);
}

/* Canonical for 48-bit virtual addresses: bits 63..47 all equal. */
static bool canonical(uint64_t addr)
{
    return (uint64_t)((int64_t)(addr << 16) >> 16) == addr;
}

static int serve_set_fs(struct ab_sandbox *sb, uint64_t base)
{
    if (!canonical(base)) {
        reply(sb, -EINVAL, 0);
        return 0;
    }
    /* The FS_BASE MSR is what sregs.fs.base reads back; one ioctl, and
     * unlike KVM_SET_SREGS it resets no other state. */
    struct {
        struct kvm_msrs header;
        struct kvm_msr_entry entry;
    } m = {.header.nmsrs = 1, .entry = {.index = MSR_FS_BASE, .data = base}};
    if (ioctl(sb->vcpu_fd, KVM_SET_MSRS, &m) != 1)
        return errno ? errno : EIO;
    reply(sb, 0, 0);
    return 0;
}

enum sys_fast_outcome sys_serve_fast(struct ab_sandbox *sb, uint32_t length,
                                     int *err)
{
    const uint8_t *req = output(sb);
    uint32_t op, u32;
    uint64_t u64;
    if (length < sizeof op)
        return SYS_FAST_TO_PYTHON;
    memcpy(&op, req, sizeof op);
    switch (op) {
    case AB_SYS_CLOCK:
    case AB_SYS_RANDOM:
        if (length != sizeof op + sizeof u32)
            return SYS_FAST_TO_PYTHON;
        memcpy(&u32, req + sizeof op, sizeof u32);
        if (op == AB_SYS_CLOCK)
            serve_clock(sb, u32);
        else
            serve_random(sb, u32);
        break;
    case AB_SYS_SET_FS:
        if (length != sizeof op + sizeof u64)
            return SYS_FAST_TO_PYTHON;
        memcpy(&u64, req + sizeof op, sizeof u64);
        *err = serve_set_fs(sb, u64);
        if (*err)
            return SYS_FAST_FAILED;
        break;
    default:
        return SYS_FAST_TO_PYTHON;
    }
    AB_COUNT(sb, sys_fast);
    return SYS_FAST_SERVED;
}
