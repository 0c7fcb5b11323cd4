/*
 * The demo guest bundled with aionub (aionub.DEMO_GUEST). Each function
 * exercises one path through the host: values of every type, CPU-bound work,
 * a guest that never returns, guest state, host calls, logging, aborts, CPU
 * exceptions, stack overflow and the heap.
 */
#include <aionub_guest.h>

/* An empty asm that claims to change x: the optimiser can no longer see the
 * value, so it cannot fold, reorder or transform the code around it. */
#define OPAQUE(x) __asm__ volatile("" : "+r"(x))

static void noop(void) {}
AB_EXPORT(noop, AB_VOID);

static int64_t add(int64_t a, int64_t b) {
    return (int64_t)((uint64_t)a + (uint64_t)b); /* wraps, no UB */
}
AB_EXPORT(add, AB_INT, AB_INT, AB_INT);

static double mul(double x, double y) { return x * y; }
AB_EXPORT(mul, AB_FLOAT, AB_FLOAT, AB_FLOAT);

static ab_bytes echo(const uint8_t *data, size_t len) { return (ab_bytes){data, len}; }
AB_EXPORT(echo, AB_BYTES, AB_BYTES);

static const char *upper(const char *s) {
    static char *last; /* the previous result, freed on the next call */
    free(last);
    last = strdup(s);
    if (!last)
        ab_abort(-1, "upper(): out of memory for %zu bytes", strlen(s) + 1);
    for (char *p = last; *p; p++)
        if (*p >= 'a' && *p <= 'z')
            *p = (char)(*p - 'a' + 'A');
    return last;
}
AB_EXPORT(upper, AB_STR, AB_STR);

/* Naive doubly recursive Fibonacci. The barrier keeps the second call from
 * becoming a loop (tail recursion with an accumulator). */
__attribute__((noinline)) static int64_t fib(int64_t n) {
    if (n < 2)
        return n;
    int64_t a = fib(n - 1);
    int64_t b = fib(n - 2);
    OPAQUE(b);
    return a + b;
}
AB_EXPORT(fib, AB_INT, AB_INT);

static void spin(void) {
    for (;;)
        __asm__ volatile("");
}
AB_EXPORT(spin, AB_VOID);

static int64_t count;
static int64_t counter(void) { return ++count; }
AB_EXPORT(counter, AB_INT);

static int64_t call_host(const char *name, int64_t arg) {
    int err;
    int64_t v = ab_call_host_int(name, arg, &err);
    return err ? 0 : v;
}
AB_EXPORT(call_host, AB_INT, AB_STR, AB_INT);

static void log_message(const char *msg) { ab_log(AB_LOG_INFO, "%s", msg); }
AB_EXPORT_AS("log", log_message, AB_VOID, AB_STR);

static void abort_with(int64_t code, const char *msg) { ab_abort(code, "%s", msg); }
AB_EXPORT_AS("abort", abort_with, AB_VOID, AB_INT, AB_STR);

static void fault(const char *kind) {
    if (strcmp(kind, "read_null") == 0) {
        /* #PF: page 0 is never mapped */
        __asm__ volatile("movq 0, %%rax" : : : "rax", "memory");
    } else if (strcmp(kind, "write_code") == 0) {
        /* #PF: code pages are mapped read-only */
        volatile uint8_t *code = (volatile uint8_t *)(uintptr_t)&fault;
        OPAQUE(code);
        *code = 0xcc;
    } else if (strcmp(kind, "ud") == 0) {
        __asm__ volatile("ud2"); /* #UD */
    } else if (strcmp(kind, "div0") == 0) {
        /* #DE: divide by a zero register */
        __asm__ volatile("xorl %%ecx, %%ecx\n\tdivq %%rcx" : : : "rax", "rcx", "rdx");
    } else if (strcmp(kind, "gp") == 0) {
        __asm__ volatile("hlt"); /* #GP: privileged at CPL3 */
    } else {
        ab_abort(1, "unknown fault kind '%s' (expected read_null, write_code, ud, div0 or gp)",
                 kind);
    }
    /* not reached: the host never resumes a faulted guest */
}
AB_EXPORT(fault, AB_VOID, AB_STR);

/* Unbounded recursion: every level keeps a frame live across the call, so
 * the stack grows until it reaches the unmapped guard page below it. */
__attribute__((noinline)) static int64_t recurse(int64_t depth) {
    volatile uint8_t frame[256];
    frame[0] = (uint8_t)depth;
    if (depth == INT64_MAX) /* never true, but keeps -Winfinite-recursion quiet */
        return 0;
    int64_t r = recurse(depth + 1);
    OPAQUE(r);
    return r + frame[0];
}

static void overflow(void) {
    int64_t r = recurse(0);
    OPAQUE(r);
}
AB_EXPORT(overflow, AB_VOID);

static int64_t alloc(int64_t n) {
    if (n < 0 || (uint64_t)n > SIZE_MAX)
        return -1;
    uint8_t *p = malloc((size_t)n);
    if (!p)
        return -1;
    for (int64_t i = 0; i < n; i++)
        p[i] = (uint8_t)i;
    OPAQUE(p);
    free(p);
    return n;
}
AB_EXPORT(alloc, AB_INT, AB_INT);
