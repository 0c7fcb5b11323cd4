/*
 * floor.c - raw KVM floors for the aionub benchmarks.
 *
 * Measures what the hardware and kernel cost with nothing of aionub in the
 * way, so that every aionub benchmark can report a ratio to the floor taken in
 * the same run on the same machine:
 *
 *   floor roundtrip N          N KVM_RUN round trips (guest `out`) on this thread
 *   floor roundtrip-thread N   the same through a dedicated vCPU thread
 *                              (futex request, eventfd completion)
 *   floor threads T N          T threads, one VM each, N round trips each
 *   floor create N [MEM_MIB [TOUCH_PAGES]]
 *                              VM creation up to the first guest `out` (the
 *                              guest first writes to TOUCH_PAGES pages)
 *   floor kill N               pthread_kill -> KVM_RUN returning EINTR
 *   floor deadline N DELAY_US  absolute-time sleep, then kill: deadline -> the
 *                              sleeper has seen the vCPU stop
 *   floor timer N DELAY_US     a kernel timer (timer_create, CLOCK_MONOTONIC,
 *                              SIGEV_THREAD_ID) signals the thread inside
 *                              KVM_RUN at an absolute deadline: deadline ->
 *                              EINTR observed on that thread (p50, p99), and
 *                              deadline -> a waiting thread has seen the stop
 *
 * Each subcommand prints one line of JSON on stdout. Latencies are
 * per-iteration samples from clock_gettime(CLOCK_MONOTONIC), summarised by
 * nearest-rank percentiles.
 *
 * The VM (a CPL3 guest looping on `out`) is set up by floor_vm.h, which
 * rawkvm.c shares.
 *
 * Build: gcc -O2 -o floor floor.c -lpthread -lrt   (floor_vm.h beside it)
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <pthread.h>
#include <signal.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/eventfd.h>
#include <sys/ioctl.h>
#include <sys/mman.h>
#include <sys/syscall.h>
#include <time.h>
#include <unistd.h>

#include <linux/kvm.h>

#include "floor_vm.h"

#define WARMUP_RUNS 1000
#define MAX_COUNT   10000000L
#define MAX_THREADS 64L
#define KILL_RESEND_NS 50000ull   /* re-send the signal every 50 us */
#define KILL_SETTLE_NS 1000000ull /* let the guest reach its loop: 1 ms */

/* ------------------------------------------------------------------------ */
/* Errors, sleep, futex                                                     */
/* ------------------------------------------------------------------------ */

static void die(const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    fputs("floor: ", stderr);
    vfprintf(stderr, fmt, ap);
    fputc('\n', stderr);
    va_end(ap);
    exit(1);
}

static void sleep_ns(uint64_t ns)
{
    struct timespec ts = { .tv_sec = ns / 1000000000ull, .tv_nsec = ns % 1000000000ull };
    while (nanosleep(&ts, &ts) != 0 && errno == EINTR)
        ;
}

/* From <linux/futex.h>; spelled out to keep this file to libc + linux/kvm.h. */
#define FUTEX_WAIT_PRIVATE_OP 128 /* FUTEX_WAIT | FUTEX_PRIVATE_FLAG */
#define FUTEX_WAKE_PRIVATE_OP 129 /* FUTEX_WAKE | FUTEX_PRIVATE_FLAG */

/* Sleep while *word == expected (or until the relative timeout, if any). */
static void futex_wait(_Atomic uint32_t *word, uint32_t expected, uint64_t timeout_ns)
{
    struct timespec ts = { .tv_sec = timeout_ns / 1000000000ull,
                           .tv_nsec = timeout_ns % 1000000000ull };
    syscall(SYS_futex, word, FUTEX_WAIT_PRIVATE_OP, expected,
            timeout_ns ? &ts : NULL, NULL, 0);
}

static void futex_wake(_Atomic uint32_t *word)
{
    syscall(SYS_futex, word, FUTEX_WAKE_PRIVATE_OP, INT_MAX, NULL, NULL, 0);
}


/* ------------------------------------------------------------------------ */
/* Statistics and JSON                                                      */
/* ------------------------------------------------------------------------ */

struct summary {
    double p50_us, p90_us, p99_us, mean_us, min_us, max_us;
};

static int cmp_u64(const void *a, const void *b)
{
    uint64_t x = *(const uint64_t *)a, y = *(const uint64_t *)b;
    return (x > y) - (x < y);
}

/* Nearest-rank percentile of sorted samples, in microseconds. */
static double percentile_us(const uint64_t *sorted, size_t n, double q)
{
    size_t rank = (size_t)(q * (double)n + 0.999999);
    if (rank < 1)
        rank = 1;
    if (rank > n)
        rank = n;
    return (double)sorted[rank - 1] / 1000.0;
}

/* Sorts the samples in place. */
static struct summary summarise(uint64_t *ns, size_t n)
{
    struct summary s = { 0 };
    if (n == 0)
        return s;
    qsort(ns, n, sizeof(ns[0]), cmp_u64);
    double total = 0;
    for (size_t i = 0; i < n; i++)
        total += (double)ns[i];
    s.p50_us = percentile_us(ns, n, 0.50);
    s.p90_us = percentile_us(ns, n, 0.90);
    s.p99_us = percentile_us(ns, n, 0.99);
    s.mean_us = total / (double)n / 1000.0;
    s.min_us = (double)ns[0] / 1000.0;
    s.max_us = (double)ns[n - 1] / 1000.0;
    return s;
}

/* One JSON line; `extra` is empty or starts with ", " and holds more fields. */
static void print_summary(const char *name, size_t n, const struct summary *s, const char *extra)
{
    printf("{\"name\": \"%s\", \"n\": %zu, \"p50_us\": %.3f, \"p90_us\": %.3f, "
           "\"p99_us\": %.3f, \"mean_us\": %.3f, \"min_us\": %.3f, \"max_us\": %.3f%s}\n",
           name, n, s->p50_us, s->p90_us, s->p99_us, s->mean_us, s->min_us, s->max_us,
           extra ? extra : "");
    fflush(stdout);
}

static uint64_t *alloc_samples(size_t n)
{
    uint64_t *p = calloc(n, sizeof(uint64_t));
    if (!p)
        die("out of memory for %zu samples", n);
    return p;
}

/* ------------------------------------------------------------------------ */
/* roundtrip N: KVM_RUN on the calling thread                               */
/* ------------------------------------------------------------------------ */

static void cmd_roundtrip(size_t n)
{
    struct vm vm;
    uint64_t *samples = alloc_samples(n);
    vm_setup(&vm, DEFAULT_MEM_MIB * MIB);

    for (int i = 0; i < WARMUP_RUNS; i++)
        vm_run_expect_out(&vm);
    for (size_t i = 0; i < n; i++) {
        uint64_t t0 = now_ns();
        vm_run_expect_out(&vm);
        samples[i] = now_ns() - t0;
    }
    vm_check_counter(&vm, WARMUP_RUNS + n);

    struct summary s = summarise(samples, n);
    print_summary("roundtrip", n, &s, NULL);
    vm_destroy(&vm);
    free(samples);
}

/* ------------------------------------------------------------------------ */
/* roundtrip-thread N: request via futex, completion via eventfd            */
/* ------------------------------------------------------------------------ */

#define REQUEST_STOP UINT32_MAX

struct thread_channel {
    _Atomic uint32_t request; /* futex word: sequence number of the last request */
    int done_fd;              /* eventfd: one count per completed KVM_RUN */
    struct vm vm;
};

/* The vCPU thread: one KVM_RUN per request, no other syscalls on the way. */
static void *vcpu_thread_main(void *arg)
{
    struct thread_channel *ch = arg;
    uint32_t served = 0;
    for (;;) {
        uint32_t req;
        while ((req = atomic_load_explicit(&ch->request, memory_order_acquire)) == served)
            futex_wait(&ch->request, served, 0);
        if (req == REQUEST_STOP)
            return NULL;
        served = req;
        vm_run_expect_out(&ch->vm);
        uint64_t one = 1;
        if (write(ch->done_fd, &one, sizeof(one)) != sizeof(one))
            die("write to the completion eventfd failed: %s", strerror(errno));
    }
}

/* The caller's side of one request: post it, then block until completion. */
static void channel_call(struct thread_channel *ch, uint32_t seq)
{
    atomic_store_explicit(&ch->request, seq, memory_order_release);
    futex_wake(&ch->request);
    uint64_t count;
    if (read(ch->done_fd, &count, sizeof(count)) != sizeof(count))
        die("read from the completion eventfd failed: %s", strerror(errno));
}

static void cmd_roundtrip_thread(size_t n)
{
    struct thread_channel ch;
    uint64_t *samples = alloc_samples(n);
    atomic_init(&ch.request, 0);
    ch.done_fd = eventfd(0, EFD_CLOEXEC);
    if (ch.done_fd < 0)
        die("eventfd failed: %s", strerror(errno));
    vm_setup(&ch.vm, DEFAULT_MEM_MIB * MIB);

    pthread_t tid;
    int err = pthread_create(&tid, NULL, vcpu_thread_main, &ch);
    if (err)
        die("pthread_create failed: %s", strerror(err));

    uint32_t seq = 0;
    for (int i = 0; i < WARMUP_RUNS; i++)
        channel_call(&ch, ++seq);
    for (size_t i = 0; i < n; i++) {
        uint64_t t0 = now_ns();
        channel_call(&ch, ++seq);
        samples[i] = now_ns() - t0;
    }

    atomic_store_explicit(&ch.request, REQUEST_STOP, memory_order_release);
    futex_wake(&ch.request);
    pthread_join(tid, NULL);
    vm_check_counter(&ch.vm, seq);

    struct summary s = summarise(samples, n);
    print_summary("roundtrip-thread", n, &s, NULL);
    vm_destroy(&ch.vm);
    close(ch.done_fd);
    free(samples);
}

/* ------------------------------------------------------------------------ */
/* threads T N: aggregate throughput of T independent VMs                   */
/* ------------------------------------------------------------------------ */

struct worker {
    pthread_t tid;
    size_t n;
    pthread_barrier_t *start_line;
    uint64_t start_ns, end_ns;
    uint64_t cpu_ns; /* this thread's CPU time over the measured loop */
};

static uint64_t thread_cpu_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_THREAD_CPUTIME_ID, &ts);
    return (uint64_t)ts.tv_sec * 1000000000ull + (uint64_t)ts.tv_nsec;
}

static void *worker_main(void *arg)
{
    struct worker *w = arg;
    struct vm vm;
    vm_setup(&vm, DEFAULT_MEM_MIB * MIB);
    for (int i = 0; i < WARMUP_RUNS; i++)
        vm_run_expect_out(&vm);

    pthread_barrier_wait(w->start_line);
    w->start_ns = now_ns();
    uint64_t cpu0 = thread_cpu_ns();
    for (size_t i = 0; i < w->n; i++)
        vm_run_expect_out(&vm);
    w->cpu_ns = thread_cpu_ns() - cpu0;
    w->end_ns = now_ns();

    vm_check_counter(&vm, WARMUP_RUNS + w->n);
    vm_destroy(&vm);
    return NULL;
}

static void cmd_threads(size_t threads, size_t n)
{
    struct worker *workers = calloc(threads, sizeof(*workers));
    pthread_barrier_t start_line;
    if (!workers)
        die("out of memory");
    pthread_barrier_init(&start_line, NULL, (unsigned)threads);

    for (size_t i = 0; i < threads; i++) {
        workers[i].n = n;
        workers[i].start_line = &start_line;
        int err = pthread_create(&workers[i].tid, NULL, worker_main, &workers[i]);
        if (err)
            die("pthread_create failed: %s", strerror(err));
    }
    uint64_t first_start = UINT64_MAX, last_end = 0, cpu_ns = 0;
    for (size_t i = 0; i < threads; i++) {
        pthread_join(workers[i].tid, NULL);
        cpu_ns += workers[i].cpu_ns;
        if (workers[i].start_ns < first_start)
            first_start = workers[i].start_ns;
        if (workers[i].end_ns > last_end)
            last_end = workers[i].end_ns;
    }

    double elapsed_s = (double)(last_end - first_start) / 1e9;
    double calls = (double)threads * (double)n;
    printf("{\"name\": \"aggregate\", \"threads\": %zu, \"n\": %zu, \"calls_per_s\": %.1f, "
           "\"elapsed_s\": %.6f, \"per_thread_call_us\": %.3f, \"cpu_us_per_call\": %.3f}\n",
           threads, n, calls / elapsed_s, elapsed_s, elapsed_s * 1e6 / (double)n,
           (double)cpu_ns / 1000.0 / calls);
    fflush(stdout);
    pthread_barrier_destroy(&start_line);
    free(workers);
}

/* ------------------------------------------------------------------------ */
/* create N: VM creation up to the first `out`, then teardown               */
/* ------------------------------------------------------------------------ */

static void cmd_create(size_t n, size_t mem_mib, size_t touch_pages)
{
    size_t mem_size = mem_mib * MIB;
    uint64_t *total = alloc_samples(n);
    uint64_t *setup = alloc_samples(n);
    uint64_t *first_entry = alloc_samples(n);
    uint64_t *teardown = alloc_samples(n);
    struct vm vm;

    /* Warm-up: page in the code paths and the kernel's caches. */
    vm_setup_touching(&vm, mem_size, touch_pages);
    vm_run_expect_out(&vm);
    vm_destroy(&vm);

    for (size_t i = 0; i < n; i++) {
        uint64_t t0 = now_ns();
        vm_setup_touching(&vm, mem_size, touch_pages);
        uint64_t t1 = now_ns();
        vm_run_expect_out(&vm);
        uint64_t t2 = now_ns();
        vm_check_counter(&vm, 1);
        uint64_t t3 = now_ns();
        vm_destroy(&vm);
        uint64_t t4 = now_ns();
        total[i] = t2 - t0;
        setup[i] = t1 - t0;
        first_entry[i] = t2 - t1;
        teardown[i] = t4 - t3;
    }

    struct summary s = summarise(total, n);
    struct summary prep = summarise(setup, n);
    struct summary entry = summarise(first_entry, n);
    struct summary down = summarise(teardown, n);
    char extra[256];
    snprintf(extra, sizeof(extra),
             ", \"mem_mib\": %zu, \"touch_pages\": %zu, \"setup_p50_us\": %.3f, \"first_entry_p50_us\": %.3f, "
             "\"teardown_p50_us\": %.3f, \"teardown_p90_us\": %.3f",
             mem_mib, touch_pages, prep.p50_us, entry.p50_us, down.p50_us, down.p90_us);
    print_summary("create", n, &s, extra);
    free(total);
    free(setup);
    free(first_entry);
    free(teardown);
}

/* ------------------------------------------------------------------------ */
/* kill N, deadline N DELAY_US: stopping a vCPU spinning at CPL3           */
/* ------------------------------------------------------------------------ */

enum kill_state { KILL_IDLE, KILL_RUNNING, KILL_STOPPED };

struct kill_ctx {
    struct vm vm;
    _Atomic uint32_t state;   /* futex word, enum kill_state */
    uint64_t eintr_ns;        /* when KVM_RUN returned EINTR; read after STOPPED */
    size_t rounds;            /* warm-up + measured */
};

/* A no-op: its only job is to make KVM_RUN return EINTR. */
static void kick_handler(int sig, siginfo_t *info, void *ucontext)
{
    (void)sig;
    (void)info;
    (void)ucontext;
}

static void install_kick_handler(void)
{
    struct sigaction sa;
    memset(&sa, 0, sizeof(sa));
    sa.sa_sigaction = kick_handler;
    sa.sa_flags = SA_SIGINFO; /* deliberately no SA_RESTART */
    sigemptyset(&sa.sa_mask);
    if (sigaction(SIGRTMIN, &sa, NULL) != 0)
        die("sigaction(SIGRTMIN) failed: %s", strerror(errno));
}

static void set_state(struct kill_ctx *k, enum kill_state s)
{
    atomic_store_explicit(&k->state, s, memory_order_release);
    futex_wake(&k->state);
}

static enum kill_state get_state(struct kill_ctx *k)
{
    return atomic_load_explicit(&k->state, memory_order_acquire);
}

/* Wait while the state is `from`. */
static void wait_state_change(struct kill_ctx *k, enum kill_state from)
{
    while (get_state(k) == from)
        futex_wait(&k->state, from, 0);
}

/* The vCPU thread: enter the spin loop, return on EINTR, repeat. */
static void *kill_vcpu_main(void *arg)
{
    struct kill_ctx *k = arg;
    for (size_t i = 0; i < k->rounds; i++) {
        vcpu_set_regs(&k->vm, GUEST_SPIN_ADDR, 0);
        __atomic_store_n(&k->vm.run->immediate_exit, 0, __ATOMIC_RELAXED);
        set_state(k, KILL_RUNNING);
        int rc = ioctl(k->vm.vcpu_fd, KVM_RUN, NULL);
        uint64_t t = now_ns();
        if (rc == 0)
            die_bad_exit(&k->vm);
        if (errno != EINTR)
            die("KVM_RUN failed: %s", strerror(errno));
        k->eintr_ns = t;
        set_state(k, KILL_STOPPED);
        wait_state_change(k, KILL_STOPPED);
    }
    return NULL;
}

/* Kick the running vCPU until it reports STOPPED; returns signals sent. */
static unsigned kick_until_stopped(struct kill_ctx *k, pthread_t vcpu, uint64_t *t0)
{
    unsigned signals = 0;
    *t0 = now_ns();
    __atomic_store_n(&k->vm.run->immediate_exit, 1, __ATOMIC_RELEASE);
    for (;;) {
        int err = pthread_kill(vcpu, SIGRTMIN);
        if (err)
            die("pthread_kill failed: %s", strerror(err));
        signals++;
        uint64_t deadline = now_ns() + KILL_RESEND_NS;
        uint64_t t;
        while (get_state(k) == KILL_RUNNING && (t = now_ns()) < deadline)
            futex_wait(&k->state, KILL_RUNNING, deadline - t);
        if (get_state(k) == KILL_STOPPED)
            return signals;
    }
}

/*
 * kill N: the guest spins, settles for 1 ms, then the caller kicks it; a
 * sample is pthread_kill -> KVM_RUN returning EINTR (on the vCPU thread).
 *
 * deadline N DELAY_US: the caller sleeps until an absolute deadline
 * (clock_nanosleep, TIMER_ABSTIME) DELAY_US after the guest started, then
 * kicks it; a sample is deadline -> the caller has seen the vCPU stop. That
 * is timer lateness + kill + the wake-up of the caller: the floor of any
 * "stop the guest at a deadline and tell the waiter" design.
 */
static void run_kills(size_t n, uint64_t delay_ns)
{
    const size_t warmup = 3;
    struct kill_ctx k;
    uint64_t *samples = alloc_samples(n);
    unsigned max_signals = 0;
    uint64_t total_signals = 0;

    install_kick_handler();
    memset(&k, 0, sizeof(k));
    atomic_init(&k.state, KILL_IDLE);
    k.rounds = warmup + n;
    vm_setup(&k.vm, DEFAULT_MEM_MIB * MIB);
    vm_run_expect_out(&k.vm); /* first entry, so every round is a re-entry */

    pthread_t tid;
    int err = pthread_create(&tid, NULL, kill_vcpu_main, &k);
    if (err)
        die("pthread_create failed: %s", strerror(err));

    for (size_t i = 0; i < k.rounds; i++) {
        wait_state_change(&k, KILL_IDLE);
        uint64_t t0, deadline = 0;
        if (delay_ns) {
            deadline = now_ns() + delay_ns;
            struct timespec ts = { .tv_sec = deadline / 1000000000ull,
                                   .tv_nsec = deadline % 1000000000ull };
            while (clock_nanosleep(CLOCK_MONOTONIC, TIMER_ABSTIME, &ts, NULL) == EINTR)
                ;
        } else {
            sleep_ns(KILL_SETTLE_NS); /* the guest is now really in its loop */
        }
        unsigned signals = kick_until_stopped(&k, tid, &t0);
        uint64_t seen = now_ns();
        if (i >= warmup) {
            samples[i - warmup] = delay_ns ? seen - deadline : k.eintr_ns - t0;
            total_signals += signals;
            if (signals > max_signals)
                max_signals = signals;
        }
        set_state(&k, KILL_IDLE);
    }
    pthread_join(tid, NULL);

    struct summary s = summarise(samples, n);
    char extra[128];
    snprintf(extra, sizeof(extra), ", \"max_signals\": %u, \"mean_signals\": %.3f",
             max_signals, (double)total_signals / (double)n);
    print_summary(delay_ns ? "deadline" : "kill", n, &s, extra);
    vm_destroy(&k.vm);
    free(samples);
}

/*
 * timer N DELAY_US: the mechanism aionub's kernel deadlines use, raw. The
 * vCPU thread arms a POSIX timer aimed at itself (SIGEV_THREAD_ID, the
 * no-op SIGRTMIN handler) at an absolute CLOCK_MONOTONIC deadline DELAY_US
 * ahead and enters the spinning guest; the timer's signal makes KVM_RUN
 * return EINTR. Samples: deadline -> EINTR observed on the vCPU thread
 * (the floor of any deadline enforced by the kernel), and deadline -> the
 * waiting main thread has seen the stop (futex wake-up included).
 */
#ifndef sigev_notify_thread_id
#define sigev_notify_thread_id _sigev_un._tid
#endif

struct timer_ctx {
    struct kill_ctx k;
    uint64_t delay_ns;
    uint64_t deadline_ns; /* of the current round; read after STOPPED */
};

static void *timer_vcpu_main(void *arg)
{
    struct timer_ctx *tc = arg;
    struct kill_ctx *k = &tc->k;
    struct sigevent sev;
    memset(&sev, 0, sizeof(sev));
    sev.sigev_notify = SIGEV_THREAD_ID;
    sev.sigev_signo = SIGRTMIN;
    sev.sigev_notify_thread_id = (pid_t)syscall(SYS_gettid);
    timer_t timer;
    if (timer_create(CLOCK_MONOTONIC, &sev, &timer) != 0)
        die("timer_create failed: %s", strerror(errno));
    for (size_t i = 0; i < k->rounds; i++) {
        enum kill_state s;
        while ((s = get_state(k)) != KILL_IDLE) /* the main thread's "go" */
            futex_wait(&k->state, s, 0);
        set_state(k, KILL_RUNNING);
        vcpu_set_regs(&k->vm, GUEST_SPIN_ADDR, 0);
        __atomic_store_n(&k->vm.run->immediate_exit, 0, __ATOMIC_RELAXED);
        uint64_t deadline = now_ns() + tc->delay_ns;
        struct itimerspec its = { .it_value = { .tv_sec = deadline / 1000000000ull,
                                                .tv_nsec = deadline % 1000000000ull } };
        if (timer_settime(timer, TIMER_ABSTIME, &its, NULL) != 0)
            die("timer_settime failed: %s", strerror(errno));
        tc->deadline_ns = deadline;
        int rc = ioctl(k->vm.vcpu_fd, KVM_RUN, NULL);
        uint64_t t = now_ns();
        if (rc == 0)
            die_bad_exit(&k->vm);
        if (errno != EINTR)
            die("KVM_RUN failed: %s", strerror(errno));
        k->eintr_ns = t;
        set_state(k, KILL_STOPPED);
    }
    timer_delete(timer);
    return NULL;
}

static void run_timer(size_t n, uint64_t delay_ns)
{
    const size_t warmup = 3;
    struct timer_ctx tc;
    uint64_t *eintr = alloc_samples(n);
    uint64_t *seen = alloc_samples(n);

    install_kick_handler();
    memset(&tc, 0, sizeof(tc));
    atomic_init(&tc.k.state, KILL_STOPPED);
    tc.k.rounds = warmup + n;
    tc.delay_ns = delay_ns;
    vm_setup(&tc.k.vm, DEFAULT_MEM_MIB * MIB);
    vm_run_expect_out(&tc.k.vm);

    pthread_t tid;
    int err = pthread_create(&tid, NULL, timer_vcpu_main, &tc);
    if (err)
        die("pthread_create failed: %s", strerror(err));
    for (size_t i = 0; i < tc.k.rounds; i++) {
        set_state(&tc.k, KILL_IDLE); /* go */
        enum kill_state s;
        while ((s = get_state(&tc.k)) != KILL_STOPPED)
            futex_wait(&tc.k.state, s, 0);
        uint64_t t = now_ns();
        if (i >= warmup) {
            eintr[i - warmup] = tc.k.eintr_ns - tc.deadline_ns;
            seen[i - warmup] = t - tc.deadline_ns;
        }
    }
    pthread_join(tid, NULL);

    struct summary e = summarise(eintr, n), w = summarise(seen, n);
    char extra[160];
    snprintf(extra, sizeof(extra), ", \"seen_p50_us\": %.3f, \"seen_p99_us\": %.3f",
             w.p50_us, w.p99_us);
    print_summary("timer", n, &e, extra);
    vm_destroy(&tc.k.vm);
    free(eintr);
    free(seen);
}

/* ------------------------------------------------------------------------ */
/* Command line                                                             */
/* ------------------------------------------------------------------------ */

static void usage(void)
{
    fprintf(stderr,
            "usage: floor roundtrip N\n"
            "       floor roundtrip-thread N\n"
            "       floor threads T N\n"
            "       floor create N [MEM_MIB [TOUCH_PAGES]]\n"
            "             (MEM_MIB: multiple of 2, default %llu; the guest writes to\n"
            "              TOUCH_PAGES pages before its first exit, default 0)\n"
            "       floor kill N\n"
            "       floor deadline N DELAY_US\n"
            "       floor timer N DELAY_US\n",
            DEFAULT_MEM_MIB);
    exit(2);
}

static size_t parse_count(const char *text, const char *what, long min, long max)
{
    char *end;
    errno = 0;
    long v = strtol(text, &end, 10);
    if (errno || end == text || *end != '\0' || v < min || v > max) {
        fprintf(stderr, "floor: %s must be an integer in [%ld, %ld], got '%s'\n",
                what, min, max, text);
        usage();
    }
    return (size_t)v;
}

static void expect_argc(int argc, int min, int max)
{
    if (argc < min || argc > max)
        usage();
}

int main(int argc, char **argv)
{
    if (argc < 2)
        usage();
    const char *cmd = argv[1];

    if (strcmp(cmd, "roundtrip") == 0) {
        expect_argc(argc, 3, 3);
        size_t n = parse_count(argv[2], "N", 1, MAX_COUNT);
        kvm_open();
        cmd_roundtrip(n);
    } else if (strcmp(cmd, "roundtrip-thread") == 0) {
        expect_argc(argc, 3, 3);
        size_t n = parse_count(argv[2], "N", 1, MAX_COUNT);
        kvm_open();
        cmd_roundtrip_thread(n);
    } else if (strcmp(cmd, "threads") == 0) {
        expect_argc(argc, 4, 4);
        size_t t = parse_count(argv[2], "T", 1, MAX_THREADS);
        size_t n = parse_count(argv[3], "N", 1, MAX_COUNT);
        kvm_open();
        cmd_threads(t, n);
    } else if (strcmp(cmd, "create") == 0) {
        expect_argc(argc, 3, 5);
        size_t n = parse_count(argv[2], "N", 1, 100000);
        size_t mib = argc == 4 ? parse_count(argv[3], "MEM_MIB", 2, (long)MAX_MEM_MIB)
                               : DEFAULT_MEM_MIB;
        if (mib % 2 != 0) {
            fprintf(stderr, "floor: MEM_MIB must be a multiple of 2, got %zu\n", mib);
            usage();
        }
        size_t touch = argc == 5 ? parse_count(argv[4], "TOUCH_PAGES", 0,
                                                (long)((mib * MIB - TOUCH_ADDR) / PAGE_SIZE_4K))
                                 : 0;
        kvm_open();
        cmd_create(n, mib, touch);
    } else if (strcmp(cmd, "kill") == 0) {
        expect_argc(argc, 3, 3);
        size_t n = parse_count(argv[2], "N", 1, 100000);
        kvm_open();
        run_kills(n, 0);
    } else if (strcmp(cmd, "deadline") == 0) {
        expect_argc(argc, 4, 4);
        size_t n = parse_count(argv[2], "N", 1, 100000);
        size_t delay_us = parse_count(argv[3], "DELAY_US", 100, 10000000);
        kvm_open();
        run_kills(n, (uint64_t)delay_us * 1000ull);
    } else if (strcmp(cmd, "timer") == 0) {
        expect_argc(argc, 4, 4);
        size_t n = parse_count(argv[2], "N", 1, 100000);
        size_t delay_us = parse_count(argv[3], "DELAY_US", 100, 10000000);
        kvm_open();
        run_timer(n, (uint64_t)delay_us * 1000ull);
    } else {
        fprintf(stderr, "floor: unknown subcommand '%s'\n", cmd);
        usage();
    }
    return 0;
}
