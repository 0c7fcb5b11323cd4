/*
 * The guest's system calls. musl's syscall_arch.h (native/guest/libc/)
 * turns every system call into a call of ab__syscall() at CPL3; this file
 * answers each one, itself or by a system request to the host, and
 * returns what the kernel would (a value, or -errno). docs/abi.md has the
 * table of what each call does.
 *
 * Files and descriptors are in files.c, signals in signals.c, memory in
 * pages.c, and exit in process.c. Anything not answered anywhere returns
 * ENOSYS and is logged once, at DEBUG, with its name.
 */
#include "internal.h"

#include <errno.h>
#include <sched.h>
#include <sys/resource.h>
#include <sys/syscall.h>
#include <sys/sysinfo.h>
#include <sys/time.h>
#include <sys/times.h>
#include <sys/utsname.h>
#include <time.h>

#include "ab_syscall_names.h" /* generated from musl's list by _libc.py */

#define ARCH_SET_FS 0x1002
#define ARCH_GET_FS 0x1003
#define SELF 1
#define NSEC 1000000000ll

/* ---- system requests ------------------------------------------------------------ */

__attribute__((no_stack_protector)) ab__writer ab__sys_begin(uint32_t op) {
    ab__writer w = {ab__out, ab__out_size, 0, false};
    ab__put_u32(&w, op);
    return w;
}

__attribute__((no_stack_protector)) int64_t ab__sys_call(ab__writer *w) {
    if (w->full)
        return -E2BIG;
    AB__OUT(AB_PORT_SYS, w->len);
    int64_t r;
    memcpy(&r, ab__out, 8);
    return r;
}

/* ---- time ----------------------------------------------------------------------- */

static long host_clock(long clock, struct timespec *ts) {
    ab__writer w = ab__sys_begin(AB_SYS_CLOCK);
    ab__put_u32(&w, (uint32_t)clock);
    int64_t r = ab__sys_call(&w);
    if (r < 0)
        return (long)r;
    int64_t v[2];
    memcpy(v, ab__sys_data(), sizeof v);
    ts->tv_sec = v[0];
    ts->tv_nsec = v[1];
    return 0;
}

static long sleep_ns(int64_t ns) {
    if (ns <= 0)
        return 0;
    ab__writer w = ab__sys_begin(AB_SYS_SLEEP);
    ab__put_u64(&w, (uint64_t)ns);
    return (long)ab__sys_call(&w);
}

static long valid_ns(const struct timespec *ts, int64_t *ns) {
    if (ts->tv_sec < 0 || ts->tv_nsec < 0 || ts->tv_nsec >= NSEC)
        return -EINVAL;
    *ns = ts->tv_sec > INT64_MAX / NSEC - 1 ? INT64_MAX : ts->tv_sec * NSEC + ts->tv_nsec;
    return 0;
}

static long clock_nanosleep_call(long clock, long flags, const struct timespec *req,
                                 struct timespec *rem) {
    int64_t ns;
    long r = valid_ns(req, &ns);
    if (r)
        return r;
    if (flags & TIMER_ABSTIME) {
        struct timespec now;
        r = host_clock(clock, &now);
        if (r)
            return r;
        ns -= now.tv_sec * NSEC + now.tv_nsec;
    }
    if (rem)
        *rem = (struct timespec){0, 0};
    return sleep_ns(ns);
}

/* ---- identity and limits ----------------------------------------------------------- */

static long uname_call(struct utsname *u) {
    memset(u, 0, sizeof *u);
    strcpy(u->sysname, "aionub");
    strcpy(u->nodename, "guest");
    snprintf(u->release, sizeof u->release, "%u", AB_ABI_VERSION);
    strcpy(u->version, "aionub guest ABI");
    strcpy(u->machine, "x86_64");
    return 0;
}

static long prlimit_call(long pid, long resource, const struct rlimit *new, struct rlimit *old) {
    if (pid != 0 && pid != SELF)
        return -ESRCH;
    if (resource < 0 || resource >= RLIM_NLIMITS)
        return -EINVAL;
    if (new)
        return -EPERM; /* the limits are the host's */
    if (old) {
        const struct ab_boot_info *bi = (const struct ab_boot_info *)(uintptr_t)AB_BOOT_INFO_ADDR;
        rlim_t v = RLIM_INFINITY;
        if (resource == RLIMIT_STACK)
            v = bi->stack_size;
        else if (resource == RLIMIT_NOFILE)
            v = 256;
        else if (resource == RLIMIT_AS || resource == RLIMIT_DATA)
            v = bi->heap_size;
        else if (resource == RLIMIT_NPROC)
            v = 1;
        old->rlim_cur = old->rlim_max = v;
    }
    return 0;
}

static long sysinfo_call(struct sysinfo *si) {
    const struct ab_boot_info *bi = (const struct ab_boot_info *)(uintptr_t)AB_BOOT_INFO_ADDR;
    struct timespec up;
    memset(si, 0, sizeof *si);
    if (host_clock(CLOCK_MONOTONIC, &up) == 0)
        si->uptime = up.tv_sec;
    si->totalram = bi->memory_size;
    si->procs = 1;
    si->mem_unit = 1;
    return 0;
}

static long cpu_time(struct timeval *tv) {
    struct timespec ts;
    long r = host_clock(CLOCK_THREAD_CPUTIME_ID, &ts);
    if (r == 0)
        *tv = (struct timeval){ts.tv_sec, ts.tv_nsec / 1000};
    return r;
}

/* ---- the thread pointer ------------------------------------------------------------- */

static uint64_t fs_base;

__attribute__((no_stack_protector)) static long set_fs(uint64_t base) {
    if (ab__boot_flags & AB_BOOT_FSGSBASE) {
        __asm__ volatile("wrfsbase %0" : : "r"(base) : "memory");
    } else {
        ab__writer w = ab__sys_begin(AB_SYS_SET_FS);
        ab__put_u64(&w, base);
        int64_t r = ab__sys_call(&w);
        if (r < 0)
            return (long)r;
    }
    fs_base = base;
    return 0;
}

/* ---- anything else --------------------------------------------------------------------- */

static long unsupported(long n) {
    static uint64_t logged[(sizeof ab__syscall_names / sizeof *ab__syscall_names + 63) / 64 + 1];
    size_t nnames = sizeof ab__syscall_names / sizeof *ab__syscall_names;
    size_t slot = n >= 0 && (size_t)n < nnames ? (size_t)n : nnames;
    if (!(logged[slot / 64] >> (slot % 64) & 1)) {
        logged[slot / 64] |= 1ull << (slot % 64);
        const char *name = slot < nnames && ab__syscall_names[slot] ? ab__syscall_names[slot] : "?";
        ab_log(AB_LOG_DEBUG, "system call %s (%ld) is not available in the guest: ENOSYS", name, n);
    }
    return -ENOSYS;
}

static long dispatch(long n, long a1, long a2, long a3, long a4, long a5, long a6);

/* The calls musl makes before the thread pointer exists (__init_tls) are
 * answered here, on a path without stack-protector checks: the canary
 * lives in TLS. Everything else goes to dispatch(). */
__attribute__((no_stack_protector)) long ab__syscall(long n, long a1, long a2, long a3, long a4,
                                                     long a5, long a6) {
    switch (n) {
    case SYS_set_thread_area:
        return set_fs((uint64_t)a1);
    case SYS_arch_prctl:
        if (a1 == ARCH_SET_FS)
            return set_fs((uint64_t)a2);
        break;
    case SYS_set_tid_address:
        return SELF;
    case SYS_brk:
        return ab__sys_brk((uintptr_t)a1);
    case SYS_mmap:
        return ab__sys_mmap((uintptr_t)a1, (size_t)a2, (int)a3, (int)a4, (int)a5, a6);
    }
    return dispatch(n, a1, a2, a3, a4, a5, a6);
}

static long dispatch(long n, long a1, long a2, long a3, long a4, long a5, long a6) {
    bool handled;
    long r = ab__file_syscall(n, a1, a2, a3, a4, a5, a6, &handled);
    if (handled)
        return r;
    r = ab__signal_syscall(n, a1, a2, a3, a4, &handled);
    if (handled)
        return r;
    switch (n) {
    /* memory (brk and mmap: above) */
    case SYS_munmap:
        return ab__sys_munmap((uintptr_t)a1, (size_t)a2);
    case SYS_mremap:
        return ab__sys_mremap((uintptr_t)a1, (size_t)a2, (size_t)a3, (int)a4, (uintptr_t)a5);
    case SYS_madvise:
        return ab__sys_madvise((uintptr_t)a1, (size_t)a2, (int)a3);
    case SYS_mprotect:
        return ab__sys_mprotect((uintptr_t)a1, (size_t)a2, (int)a3);
    case SYS_mlock:
    case SYS_munlock:
    case SYS_mlockall:
    case SYS_munlockall:
    case SYS_membarrier:
        return 0;

    /* time */
    case SYS_clock_gettime:
        return host_clock(a1, (struct timespec *)a2);
    case SYS_clock_getres:
        if (a2)
            *(struct timespec *)a2 = (struct timespec){0, 1};
        return host_clock(a1, &(struct timespec){0, 0});
    case SYS_gettimeofday: {
        struct timespec ts;
        r = host_clock(CLOCK_REALTIME, &ts);
        if (r == 0 && a1)
            *(struct timeval *)a1 = (struct timeval){ts.tv_sec, ts.tv_nsec / 1000};
        if (r == 0 && a2)
            memset((void *)a2, 0, 8); /* struct timezone: UTC */
        return r;
    }
    case SYS_time: {
        struct timespec ts;
        r = host_clock(CLOCK_REALTIME, &ts);
        if (r)
            return r;
        if (a1)
            *(time_t *)a1 = ts.tv_sec;
        return ts.tv_sec;
    }
    case SYS_nanosleep:
        return clock_nanosleep_call(CLOCK_MONOTONIC, 0, (const struct timespec *)a1,
                                    (struct timespec *)a2);
    case SYS_clock_nanosleep:
        return clock_nanosleep_call(a1, a2, (const struct timespec *)a3, (struct timespec *)a4);
    case SYS_getrusage: {
        if (a1 != RUSAGE_SELF && a1 != RUSAGE_THREAD && a1 != RUSAGE_CHILDREN)
            return -EINVAL;
        struct rusage *ru = (struct rusage *)a2;
        memset(ru, 0, sizeof *ru);
        return a1 == RUSAGE_CHILDREN ? 0 : cpu_time(&ru->ru_utime);
    }
    case SYS_times: {
        struct timeval cpu;
        struct timespec now;
        r = cpu_time(&cpu);
        if (r == 0)
            r = host_clock(CLOCK_MONOTONIC, &now);
        if (r)
            return r;
        if (a1)
            *(struct tms *)a1 = (struct tms){(clock_t)(cpu.tv_sec * 100 + cpu.tv_usec / 10000), 0, 0, 0};
        return (long)(now.tv_sec * 100 + now.tv_nsec / 10000000);
    }

    /* randomness */
    case SYS_getrandom: {
        if (a3 & ~7l)
            return -EINVAL; /* GRND_NONBLOCK, GRND_RANDOM, GRND_INSECURE */
        size_t want = (size_t)a2, done = 0;
        while (done < want) {
            size_t n = want - done < ab__sys_room() ? want - done : ab__sys_room();
            if (n > UINT32_MAX)
                n = UINT32_MAX;
            ab__writer w = ab__sys_begin(AB_SYS_RANDOM);
            ab__put_u32(&w, (uint32_t)n);
            int64_t got = ab__sys_call(&w);
            if (got <= 0 || (uint64_t)got > n)
                return done ? (long)done : -EIO;
            memcpy((char *)a1 + done, ab__sys_data(), (size_t)got);
            done += (size_t)got;
        }
        return (long)done;
    }

    /* the process */
    case SYS_exit:
    case SYS_exit_group:
        ab__exit((int)(a1 & 0xff), 0);
    case SYS_getpid:
    case SYS_gettid:
    case SYS_getpgrp:
    case SYS_getsid:
    case SYS_getpgid:
        return SELF;
    case SYS_getppid:
    case SYS_getuid:
    case SYS_geteuid:
    case SYS_getgid:
    case SYS_getegid:
    case SYS_set_robust_list:
    case SYS_sched_yield:
    case SYS_umask:
        return 0;
    case SYS_getresuid:
    case SYS_getresgid:
        *(unsigned *)a1 = *(unsigned *)a2 = *(unsigned *)a3 = 0;
        return 0;
    case SYS_getgroups:
        return 0;
    case SYS_uname:
        return uname_call((struct utsname *)a1);
    case SYS_sysinfo:
        return sysinfo_call((struct sysinfo *)a1);
    case SYS_prlimit64:
        return prlimit_call(a1, a2, (const struct rlimit *)a3, (struct rlimit *)a4);
    case SYS_getrlimit:
        return prlimit_call(0, a1, NULL, (struct rlimit *)a2);
    case SYS_setrlimit:
        return -EPERM;
    case SYS_sched_getaffinity:
        if (a2 < 8 || (a2 & 7))
            return -EINVAL;
        memset((void *)a3, 0, (size_t)a2);
        *(uint8_t *)a3 = 1; /* one CPU */
        return 8;
    case SYS_arch_prctl:
        if (a1 == ARCH_GET_FS) {
            *(uint64_t *)a2 = fs_base;
            return 0;
        }
        return -EINVAL;
    case SYS_futex: {
        int op = (int)(a2 & 0x7f); /* without FUTEX_PRIVATE_FLAG, FUTEX_CLOCK_REALTIME */
        if (op == 1 /* FUTEX_WAKE */)
            return 0; /* nobody else to wake */
        if (op == 0 /* FUTEX_WAIT */ && *(const int *)a1 != (int)a3)
            return -EAGAIN;
        /* Waiting on ourselves: nobody can wake us. As in a real
         * deadlock, only the call's deadline (or a kill) ends it. */
        if (op == 0)
            return ab__signal_syscall(SYS_pause, 0, 0, 0, 0, &handled);
        return -ENOSYS;
    }
    case SYS_clone:
    case SYS_clone3:
    case SYS_fork:
    case SYS_vfork:
    case SYS_execve:
    case SYS_execveat:
        return unsupported(n); /* one process, one thread */
    case SYS_wait4:
    case SYS_waitid:
        return -ECHILD;
    default:
        return unsupported(n);
    }
}
