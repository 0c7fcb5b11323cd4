/*
 * The C library and the system-call layer as a guest sees them, for
 * tests/test_libc.py: exported functions for calls, and a main() whose
 * argv[1] picks what a run does.
 */
#define _GNU_SOURCE
#include <aionub_guest.h>

#include <ctype.h>
#include <errno.h>
#include <fcntl.h>
#include <setjmp.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/mman.h>
#include <sys/random.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

static char out[8192];

/* ---- formatting and parsing --------------------------------------------------- */

static const char *fmt_double(const char *fmt, double x) {
    snprintf(out, sizeof out, fmt, x);
    return out;
}
AB_EXPORT(fmt_double, AB_STR, AB_STR, AB_FLOAT);

static double parse_double(const char *s) {
    char *end;
    double d = strtod(s, &end);
    return *end ? -12345.678 : d; /* all of it must parse */
}
AB_EXPORT(parse_double, AB_FLOAT, AB_STR);

static const char *fmt_misc(void) {
    snprintf(out, sizeof out, "[%5d|%-5s|%05.1f|%x|%o|%c|%%|%lld|%zu|%+.2e|%s]", 42, "ab", 3.14159, 255, 8, 'z',
             -9223372036854775807LL - 1, (size_t)18446744073709551615ULL, 12345.678, "é");
    return out;
}
AB_EXPORT(fmt_misc, AB_STR);

static const char *scan(const char *s) {
    int i = 0;
    unsigned x = 0;
    double d = 0;
    char word[32] = "";
    int n = sscanf(s, "%d %x %lf %31s", &i, &x, &d, word);
    snprintf(out, sizeof out, "%d:%d:%u:%g:%s", n, i, x, d, word);
    return out;
}
AB_EXPORT(scan, AB_STR, AB_STR);

static const char *strtol_errno(const char *s) {
    errno = 0;
    char *end;
    long v = strtol(s, &end, 0);
    snprintf(out, sizeof out, "%ld %d %s %td", v, errno, errno ? strerror(errno) : "-", end - s);
    return out;
}
AB_EXPORT(strtol_errno, AB_STR, AB_STR);

static const char *error_text(int64_t e) { return strerror((int)e); }
AB_EXPORT(error_text, AB_STR, AB_INT);

static int cmp_u8(const void *a, const void *b) { return *(const uint8_t *)a - *(const uint8_t *)b; }

static uint8_t sorted[65536];
static ab_bytes sort_bytes(const uint8_t *p, size_t n) {
    if (n > sizeof sorted)
        n = sizeof sorted;
    memcpy(sorted, p, n);
    qsort(sorted, n, 1, cmp_u8);
    return (ab_bytes){sorted, n};
}
AB_EXPORT(sort_bytes, AB_BYTES, AB_BYTES);

static int cmp_long(const void *a, const void *b) {
    long x = *(const long *)a, y = *(const long *)b;
    return (x > y) - (x < y);
}

/* sorts 1000 pseudo-random longs; returns the index bsearch finds for `key`, or -1 */
static int64_t sort_and_search(int64_t seed, int64_t key) {
    static long v[1000];
    srand((unsigned)seed);
    for (int i = 0; i < 1000; i++)
        v[i] = rand() % 5000;
    qsort(v, 1000, sizeof *v, cmp_long);
    for (int i = 1; i < 1000; i++)
        if (v[i - 1] > v[i])
            return -2;
    long k = (long)key;
    long *hit = bsearch(&k, v, 1000, sizeof *v, cmp_long);
    return hit ? (hit - v) : -1;
}
AB_EXPORT(sort_and_search, AB_INT, AB_INT, AB_INT);

static const char *tokens(const char *s, const char *delim) {
    char buf[512];
    snprintf(buf, sizeof buf, "%s", s);
    out[0] = 0;
    for (char *t = strtok(buf, delim); t; t = strtok(NULL, delim)) {
        strcat(out, t);
        strcat(out, "|");
    }
    return out;
}
AB_EXPORT(tokens, AB_STR, AB_STR, AB_STR);

static int64_t casecmp(const char *a, const char *b) {
    int r = strcasecmp(a, b);
    return (r > 0) - (r < 0);
}
AB_EXPORT(casecmp, AB_INT, AB_STR, AB_STR);

static const char *upper(const char *s) {
    size_t i = 0;
    for (; s[i] && i < sizeof out - 1; i++)
        out[i] = (char)toupper((unsigned char)s[i]);
    out[i] = 0;
    return out;
}
AB_EXPORT(upper, AB_STR, AB_STR);

/* ---- control flow ---------------------------------------------------------------- */

static jmp_buf jb;
static int depth_reached;
static void dive(int depth, int target) {
    volatile char pad[256];
    pad[0] = (char)depth;
    depth_reached = depth + pad[0] - depth;
    if (depth == target)
        longjmp(jb, depth + 1000);
    dive(depth + 1, target);
}
static int64_t jump(int64_t target) {
    int r = setjmp(jb);
    if (r)
        return r * 1000 + depth_reached;
    dive(0, (int)target);
    return -1;
}
AB_EXPORT(jump, AB_INT, AB_INT);

static volatile sig_atomic_t got_signal;
static void on_signal(int sig) { got_signal += sig; }

static int64_t raise_handled(int64_t sig) {
    got_signal = 0;
    struct sigaction sa = {0};
    sa.sa_handler = on_signal;
    if (sigaction((int)sig, &sa, NULL) != 0)
        return -1;
    if (raise((int)sig) != 0)
        return -2;
    int first = got_signal;
    /* blocked: pending until unblocked */
    sigset_t set;
    sigemptyset(&set);
    sigaddset(&set, (int)sig);
    sigprocmask(SIG_BLOCK, &set, NULL);
    raise((int)sig);
    int while_blocked = got_signal;
    sigprocmask(SIG_UNBLOCK, &set, NULL);
    signal((int)sig, SIG_DFL);
    return first * 10000 + while_blocked * 100 + got_signal;
}
AB_EXPORT(raise_handled, AB_INT, AB_INT);

static void do_abort(void) { abort(); }
AB_EXPORT(do_abort, AB_VOID);

static void do_exit(int64_t code) { exit((int)code); }
AB_EXPORT(do_exit, AB_VOID, AB_INT);

/* ---- environment, time, randomness ----------------------------------------------------- */

static double now_realtime(void) {
    struct timespec t;
    if (clock_gettime(CLOCK_REALTIME, &t))
        return -1;
    return (double)t.tv_sec + t.tv_nsec / 1e9;
}
AB_EXPORT(now_realtime, AB_FLOAT);

static double now_monotonic(void) {
    struct timespec t;
    if (clock_gettime(CLOCK_MONOTONIC, &t))
        return -1;
    return (double)t.tv_sec + t.tv_nsec / 1e9;
}
AB_EXPORT(now_monotonic, AB_FLOAT);

static int64_t time_now(void) { return (int64_t)time(NULL); }
AB_EXPORT(time_now, AB_INT);

static const char *random_hex(void) {
    unsigned char b[16];
    if (getrandom(b, sizeof b, 0) != (ssize_t)sizeof b)
        return "error";
    for (int i = 0; i < 16; i++)
        snprintf(out + 2 * i, 3, "%02x", b[i]);
    return out;
}
AB_EXPORT(random_hex, AB_STR);

static int64_t random_big(int64_t n) {
    /* more than fits one reply: the runtime asks again */
    static unsigned char b[200000];
    if ((size_t)n > sizeof b)
        return -1;
    memset(b, 0, sizeof b);
    ssize_t got = getrandom(b, (size_t)n, 0);
    size_t zeros = 0;
    for (size_t i = 0; i < (size_t)n; i++)
        zeros += b[i] == 0;
    /* about n/256 zero bytes: far fewer than a buffer left unwritten */
    return got == n && zeros < (size_t)n / 64 + 8 ? got : -2;
}
AB_EXPORT(random_big, AB_INT, AB_INT);

static const char *rand_sequence(int64_t seed) {
    srand((unsigned)seed);
    int a = rand(), b = rand(), c = rand();
    snprintf(out, sizeof out, "%d %d %d", a, b, c);
    return out;
}
AB_EXPORT(rand_sequence, AB_STR, AB_INT);

static int64_t sleep_ms(int64_t ms) {
    struct timespec t = {ms / 1000, (ms % 1000) * 1000000};
    return nanosleep(&t, NULL) == 0 ? 0 : errno;
}
AB_EXPORT(sleep_ms, AB_INT, AB_INT);

static int64_t sleep_s(int64_t s) { return sleep((unsigned)s); }
AB_EXPORT(sleep_s, AB_INT, AB_INT);

static int64_t try_socket(void) {
    errno = 0;
    int fd = socket(AF_INET, SOCK_STREAM, 0);
    return fd >= 0 ? -1000 : errno;
}
AB_EXPORT(try_socket, AB_INT);

static __thread int64_t tls_counter = 7;
static int64_t tls_bump(void) { return ++tls_counter; }
AB_EXPORT(tls_bump, AB_INT);

/* ---- memory ------------------------------------------------------------------------------ */

/* malloc of many sizes at once, each filled and checked, then freed (also
 * when something fails, so that a failure does not leak into later calls) */
static int64_t malloc_sizes(int64_t seed) {
    enum { N = 600 };
    static unsigned char *p[N];
    static size_t sz[N];
    int64_t err = 0;
    srand((unsigned)seed);
    for (int round = 0; round < 3 && !err; round++) {
        memset(p, 0, sizeof p);
        for (int i = 0; i < N && !err; i++) {
            int k = rand() % 10;
            sz[i] = k < 6 ? (size_t)(rand() % 200) : k < 9 ? (size_t)(rand() % 20000) : (size_t)(rand() % 60000);
            p[i] = malloc(sz[i]);
            if (!p[i])
                err = -1 - i;
            else if ((uintptr_t)p[i] % 16)
                err = -10000;
            else
                memset(p[i], (unsigned char)i, sz[i]);
        }
        for (int i = 0; i < N && !err; i += 3) { /* grow a third */
            unsigned char *q = realloc(p[i], sz[i] * 2 + 1);
            if (!q) {
                err = -20000;
                break;
            }
            memset(q + sz[i], (unsigned char)i, sz[i] + 1);
            p[i] = q;
            sz[i] = sz[i] * 2 + 1;
        }
        for (int i = 0; i < N; i++) {
            for (size_t j = 0; !err && p[i] && j < sz[i]; j++)
                if (p[i][j] != (unsigned char)i)
                    err = -30000 - i;
            free(p[i]);
        }
    }
    return err;
}
AB_EXPORT(malloc_sizes, AB_INT, AB_INT);

/* a huge block grown by realloc (mremap for mmapped chunks); returns MiB verified */
static int64_t malloc_huge(int64_t mib) {
    size_t n = (size_t)mib << 20;
    unsigned char *p = malloc(n / 2);
    if (!p)
        return -1;
    for (size_t i = 0; i < n / 2; i += 4096)
        p[i] = (unsigned char)(i >> 12);
    unsigned char *q = realloc(p, n);
    if (!q)
        return -2;
    for (size_t i = 0; i < n / 2; i += 4096)
        if (q[i] != (unsigned char)(i >> 12))
            return -3;
    for (size_t i = n / 2; i < n; i += 4096)
        if (q[i] != 0 && q[i] != (unsigned char)(i >> 12))
            return -4;
    free(q);
    return mib;
}
AB_EXPORT(malloc_huge, AB_INT, AB_INT);

/* malloc until NULL; returns the bytes obtained, after checking that freeing
 * it all lets a large block be had again */
static int64_t malloc_exhaust(int64_t chunk) {
    void **list = NULL;
    size_t n = 0, cap = 0;
    int64_t total = 0;
    for (;;) {
        void *p = malloc((size_t)chunk);
        if (!p)
            break;
        memset(p, 1, (size_t)chunk);
        if (n == cap) {
            size_t ncap = cap ? cap * 2 : 64;
            void **nl = realloc(list, ncap * sizeof *nl);
            if (!nl) {
                free(p);
                break;
            }
            list = nl;
            cap = ncap;
        }
        list[n++] = p;
        total += chunk;
    }
    if (errno != ENOMEM)
        return -1;
    if (malloc((size_t)1 << 40) != NULL)
        return -2;
    for (size_t i = 0; i < n; i++)
        free(list[i]);
    free(list);
    void *again = malloc((size_t)total / 2);
    if (!again)
        return -3;
    free(again);
    return total;
}
AB_EXPORT(malloc_exhaust, AB_INT, AB_INT);

/* mmap, dirty, munmap, mmap again: the pages come back zeroed */
static int64_t mmap_reuse(int64_t pages) {
    size_t len = (size_t)pages * 4096;
    unsigned char *a = mmap(NULL, len, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (a == MAP_FAILED)
        return -1;
    memset(a, 0xa5, len);
    if (munmap(a, len))
        return -2;
    unsigned char *b = mmap(NULL, len, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (b == MAP_FAILED)
        return -3;
    for (size_t i = 0; i < len; i++)
        if (b[i])
            return -4;
    int same = a == b;
    munmap(b, len);
    return same;
}
AB_EXPORT(mmap_reuse, AB_INT, AB_INT);

/* ---- files --------------------------------------------------------------------------------- */

static unsigned char filebuf[65536];
static ab_bytes read_file(const char *path) {
    FILE *f = fopen(path, "rb");
    if (!f) {
        int n = snprintf((char *)filebuf, sizeof filebuf, "error %d", errno);
        return (ab_bytes){filebuf, (size_t)n};
    }
    size_t n = fread(filebuf, 1, sizeof filebuf, f);
    fclose(f);
    return (ab_bytes){filebuf, n};
}
AB_EXPORT(read_file, AB_BYTES, AB_STR);

/* fseek/ftell/fstat/stat on one file: "size ftell-after-seek-end byte-at-offset" */
static const char *file_facts(const char *path, int64_t offset) {
    struct stat st, fst;
    if (stat(path, &st))
        return snprintf(out, sizeof out, "stat %d", errno), out;
    FILE *f = fopen(path, "r");
    if (!f)
        return snprintf(out, sizeof out, "fopen %d", errno), out;
    if (fstat(fileno(f), &fst))
        return "fstat";
    fseek(f, 0, SEEK_END);
    long end = ftell(f);
    fseek(f, (long)offset, SEEK_SET);
    int c = fgetc(f);
    long after = ftell(f);
    fseek(f, -1, SEEK_CUR);
    int again = fgetc(f);
    fclose(f);
    snprintf(out, sizeof out, "%lld %lld %d %ld %d %ld %d", (long long)st.st_size, (long long)fst.st_size,
             S_ISREG(st.st_mode), end, c, after, again == c);
    return out;
}
AB_EXPORT(file_facts, AB_STR, AB_STR, AB_INT);

static int64_t open_errno(const char *path, int64_t flags) {
    errno = 0;
    int fd = open(path, (int)flags, 0644);
    if (fd >= 0) {
        close(fd);
        return 0;
    }
    return errno;
}
AB_EXPORT(open_errno, AB_INT, AB_STR, AB_INT);

static int64_t fopen_write_errno(const char *path) {
    errno = 0;
    FILE *f = fopen(path, "w");
    if (f) {
        fclose(f);
        return 0;
    }
    return errno;
}
AB_EXPORT(fopen_write_errno, AB_INT, AB_STR);

static int64_t unlink_errno(const char *path) { return unlink(path) == 0 ? 0 : errno; }
AB_EXPORT(unlink_errno, AB_INT, AB_STR);

/* ---- output in calls ------------------------------------------------------------------------ */

static int64_t print_lines(const char *text, bool to_stderr) {
    return fputs(text, to_stderr ? stderr : stdout) < 0 ? -1 : 0;
}
AB_EXPORT(print_lines, AB_INT, AB_STR, AB_BOOL);

static int64_t print_then_log(void) {
    printf("before the log record");
    ab_log(AB_LOG_INFO, "the log record");
    printf(" and after\n");
    return 0;
}
AB_EXPORT(print_then_log, AB_INT);

/* ---- the stack protector ------------------------------------------------------------------------ */

__attribute__((noinline)) static int64_t smash(int64_t n) {
    char buf[16];
    volatile char *p = buf;
    for (int64_t i = 0; i < n; i++)
        p[i] = 'A';
    return buf[0];
}
AB_EXPORT(smash, AB_INT, AB_INT);

/* ---- main ------------------------------------------------------------------------------------------ */

static int constructed;
__attribute__((constructor)) static void ctor(void) { constructed = 1234; }
static void goodbye(void) { printf("atexit handler ran\n"); }

static int is(const char *a, const char *b) { return strcmp(a, b) == 0; }

int main(int argc, char **argv) {
    const char *what = argc > 1 ? argv[1] : "";
    if (is(what, "ctor")) {
        atexit(goodbye);
        printf("constructed %d\n", constructed);
        return 0;
    }
    if (is(what, "fgets")) { /* number the lines of stdin */
        char line[256];
        int n = 0;
        while (fgets(line, sizeof line, stdin))
            printf("%d: %s", ++n, line);
        printf("lines %d\n", n);
        return 0;
    }
    if (is(what, "scanf")) { /* sum the integers on stdin */
        long sum = 0, v;
        int n = 0;
        while (scanf("%ld", &v) == 1) {
            sum += v;
            n++;
        }
        printf("%d numbers, sum %ld\n", n, sum);
        return 0;
    }
    if (is(what, "env")) {
        for (int i = 2; i < argc; i++) {
            const char *v = getenv(argv[i]);
            printf("%s=%s\n", argv[i], v ? v : "(unset)");
        }
        return 0;
    }
    if (is(what, "streams")) {
        printf("out 1\n");
        fprintf(stderr, "err 1\n");
        printf("out 2 (no newline)");
        return 5;
    }
    if (is(what, "abort"))
        abort();
    if (is(what, "raise")) {
        signal(SIGUSR1, on_signal);
        raise(SIGUSR1);
        fprintf(stderr, "handled %d\n", (int)got_signal); /* stderr: unbuffered */
        printf("first line\n"); /* musl writes stdout's first line out, then finds no tty */
        printf("buffered, lost\n"); /* fully buffered from then on, like a pipe */
        raise(SIGTERM); /* default action: ends the run, without flushing */
        printf("not reached\n");
        return 0;
    }
    if (is(what, "exit"))
        exit(atoi(argv[2]));
    if (is(what, "smash"))
        return (int)smash(atoi(argv[2]));
    if (is(what, "tls"))
        return (int)tls_bump();
    return 100;
}
