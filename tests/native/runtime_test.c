/*
 * Native tests of the guest runtime's pure-C parts: snprintf (compared with
 * the host's glibc), the string functions, strtol and friends, the heap, the
 * message encoding and the host-call codec.
 *
 * tests/test_guest_runtime.py compiles the runtime sources for the host with
 * AB__OUT redirected to ab__test_out(), renames every runtime symbol with a
 * t_ prefix (so they do not clash with glibc's), and links this file.
 */
#define _GNU_SOURCE
#include <float.h>
#include <limits.h>
#include <math.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/types.h>

/* ---- the runtime, renamed ---------------------------------------------------- */

int t_snprintf(char *, size_t, const char *, ...);
int t_vsnprintf(char *, size_t, const char *, va_list);
void *t_malloc(size_t);
void t_free(void *);
void *t_realloc(void *, size_t);
void *t_calloc(size_t, size_t);
size_t t_ab__heap_check(void);
void t_ab__heap_init(void *, size_t);
void *t_memcpy(void *, const void *, size_t);
void *t_memmove(void *, const void *, size_t);
void *t_memset(void *, int, size_t);
int t_memcmp(const void *, const void *, size_t);
void *t_memchr(const void *, int, size_t);
size_t t_strlen(const char *);
size_t t_strnlen(const char *, size_t);
int t_strcmp(const char *, const char *);
int t_strncmp(const char *, const char *, size_t);
char *t_strcpy(char *, const char *);
char *t_strncpy(char *, const char *, size_t);
char *t_strcat(char *, const char *);
char *t_strncat(char *, const char *, size_t);
char *t_strchr(const char *, int);
char *t_strrchr(const char *, int);
char *t_strstr(const char *, const char *);
char *t_strdup(const char *);
char *t_strndup(const char *, size_t);
long t_strtol(const char *, char **, int);
unsigned long long t_strtoull(const char *, char **, int);
size_t t_ab__utf8_valid_prefix(const uint8_t *, size_t);
size_t t_ab__put_messagef(size_t, const char *, ...);
void t_ab_log(int, const char *, ...);

typedef struct {
    int type;
    union {
        bool b;
        int64_t i;
        double f;
        struct {
            const void *ptr;
            size_t len;
        } buf;
    };
} ab_value;
int t_ab_call_host(const char *, const ab_value *, size_t, ab_value *);
void t_ab_value_free(ab_value *);
int64_t t_ab_call_host_int(const char *, int64_t, int *);

/* What runtime.c (not linked here) would provide. */
uint8_t *t_ab__in, *t_ab__out;
size_t t_ab__in_size, t_ab__out_size;
bool t_ab__in_call;
const char *t_ab__type_name(unsigned t) {
    static const char *names[] = {"None", "bool", "int", "float", "str", "bytes"};
    return t < 6 ? names[t] : "?";
}

/* ---- the fake host ------------------------------------------------------------- */

static int failures, checks;
#define CHECK(cond, ...)                                                                 \
    do {                                                                                 \
        checks++;                                                                        \
        if (!(cond)) {                                                                   \
            failures++;                                                                  \
            printf("FAIL %s:%d: ", __FILE__, __LINE__);                                  \
            printf(__VA_ARGS__);                                                         \
            printf("\n");                                                                \
        }                                                                                \
    } while (0)

static jmp_buf abort_jmp;
static bool expect_abort;
static char last_abort[4096];
static unsigned last_port, last_n;
static uint8_t reply[4096]; /* copied into the output buffer on a host call */
static size_t reply_len;

void t_ab__test_out(unsigned port, unsigned n) {
    last_port = port;
    last_n = n;
    if (port == 0xE4) {
        uint32_t len;
        memcpy(&len, t_ab__out + 8, 4);
        memcpy(last_abort, t_ab__out + 12, len + 1);
        if (expect_abort)
            longjmp(abort_jmp, 1);
        printf("unexpected abort: %s\n", last_abort);
        exit(2);
    }
    if (port == 0xE2)
        memcpy(t_ab__out, reply, reply_len);
}

#define ABORTS(stmt)                                                                     \
    ({                                                                                   \
        expect_abort = true;                                                             \
        int aborted_ = setjmp(abort_jmp);                                                \
        if (!aborted_) {                                                                 \
            stmt;                                                                        \
        }                                                                                \
        expect_abort = false;                                                            \
        aborted_;                                                                        \
    })

static uint64_t rng_state = 88172645463325252ull;
static uint64_t rnd(void) {
    rng_state ^= rng_state << 13;
    rng_state ^= rng_state >> 7;
    rng_state ^= rng_state << 17;
    return rng_state;
}

/* ---- snprintf ------------------------------------------------------------------- */

static void same_as_glibc(const char *fmt, ...) {
    char a[2048], b[2048];
    va_list ap, aq;
    va_start(ap, fmt);
    va_copy(aq, ap);
    int ra = vsnprintf(a, sizeof a, fmt, ap);
    int rb = t_vsnprintf(b, sizeof b, fmt, aq);
    va_end(ap);
    va_end(aq);
    CHECK(ra == rb && strcmp(a, b) == 0, "format [%s]: glibc [%s] %d, runtime [%s] %d", fmt, a,
          ra, b, rb);
}

static void test_printf(void) {
    same_as_glibc("hello %s, %d %i %u %x %X %o %c %%", "world", -42, 17, 3000000000u, 0xbeef,
                  0xbeef, 0755, 'z');
    same_as_glibc("[%5d] [%-5d] [%05d] [%+d] [% d] [%+5d] [%-+5d] [%.3d] [%8.3d] [%-8.3d] [%08.3d]",
                  42, 42, 42, 42, 42, 42, 42, 7, 7, 7, 7);
    same_as_glibc("[%.0d] [%.0u] [%#.0o] [%#.0x] [%5.0d] [%#x] [%#X] [%#o] [%#o] [%#5o] [%#08x]", 0,
                  0, 0, 0, 0, 0, 0, 0, 8, 8, 255);
    same_as_glibc("[%hhd] [%hhu] [%hd] [%hu] [%ld] [%lu] [%lld] [%llu] [%zd] [%zu] [%jd] [%ju] [%td]",
                  300, 300, 70000, 70000, LONG_MIN, ULONG_MAX, LLONG_MIN, ULLONG_MAX, (ssize_t)-5,
                  (size_t)5, INTMAX_MIN, UINTMAX_MAX, (ptrdiff_t)-9);
    same_as_glibc("[%*d] [%-*d] [%*d] [%.*d] [%.*d] [%*.*d]", 6, 1, 6, 1, -6, 1, 4, 1, -4, 1, 8, 3,
                  5);
    same_as_glibc("[%s] [%10s] [%-10s] [%.2s] [%10.2s] [%.0s] [%.*s]", "abc", "abc", "abc", "abc",
                  "abc", "abc", 2, "abcdef");
    same_as_glibc("[%s] [%.3s] [%10s] [%.8s]", (char *)NULL, (char *)NULL, (char *)NULL,
                  (char *)NULL);
    same_as_glibc("[%p] [%20p] [%-20p] [%p] [%10p]", (void *)0x1234, (void *)0xdeadbeef, (void *)1,
                  (void *)NULL, (void *)NULL);
    same_as_glibc("[%c] [%3c] [%-3c]", 'a', 'b', 'c');
    same_as_glibc("[%d] [%d] [%x] [%lx] [%lo] [%#lX]", INT_MIN, INT_MAX, UINT_MAX, ULONG_MAX,
                  ULONG_MAX, ULONG_MAX);

    static const double values[] = {
        0.0, -0.0, 1.0, -1.0, 0.5, 1.5, 2.5, -2.5, 0.125, 0.375, 1e-5, 123456789.0, 1e21, 1e22,
        1e100, 1e300, DBL_MAX, DBL_MIN, 4.9e-324, 2.2250738585072009e-308, 0.1, 0.2, 0.3,
        1.0 / 3, 2.0 / 3, 3.14159265358979, 9.5, 99.5, 0.05, 0.15, 0.25, 0.35, 0.45, 9999995.0,
        0.000099999, 0.0001, 0.00001, 123456.0, 1234567.0, 100000.0, 1e6, 5e-5, 0.0009765625,
        INFINITY, -INFINITY, NAN, -NAN, 1e15, 9007199254740993.0, 18446744073709551616.0};
    static const char *formats[] = {
        "%f", "%.0f", "%.1f", "%.2f", "%.3f", "%.10f", "%.17f", "%.20f", "%.40f", "%#.0f", "%+f",
        "% f", "%12.4f", "%-12.4f|", "%012.4f", "%+012.4f", "%F", "%e", "%.0e", "%.1e", "%.3e",
        "%.16e", "%.20e", "%#.0e", "%+e", "%15.3e", "%-15.3e|", "%015.3e", "%E", "%g", "%.0g",
        "%.1g", "%.2g", "%.3g", "%.10g", "%.17g", "%.20g", "%#g", "%#.3g", "%+g", "%12g",
        "%-12g|", "%012g", "%G", "%#.0g", "%5f", "%010f", "%-10f|", "%.60f", "%.330f", "%.800f",
        "%.750e", "%.800g"};
    for (size_t i = 0; i < sizeof values / sizeof *values; i++) {
        for (size_t j = 0; j < sizeof formats / sizeof *formats; j++)
            same_as_glibc(formats[j], values[i]);
        same_as_glibc("%Lf", (long double)values[i]);
    }
    /* glibc prints "1.e+06" here (it loses the zeros after a round-half-even
     * carry); C requires them, and 9999995 %#g gives "1.00000e+07" in both. */
    char buf[64];
    t_snprintf(buf, sizeof buf, "%#g", 999999.5);
    CHECK(strcmp(buf, "1.00000e+06") == 0, "%%#g of 999999.5: %s", buf);

    char fmt[32];
    for (int k = 0; k < 200000; k++) {
        double v;
        uint64_t bits = rnd();
        if (k % 3 == 0)
            memcpy(&v, &bits, 8);
        else if (k % 3 == 1)
            v = (double)((int64_t)(bits % 2000001) - 1000000) / pow(10, (double)(rnd() % 12));
        else
            v = ldexp((double)(bits >> 11), (int)(rnd() % 200) - 150);
        static const char *flags[] = {"", "#", "+", " ", "-", "0", "+0", "#0", "-#"};
        char conv = "feEgG"[rnd() % 5];
        int prec = (int)(rnd() % 25) - 1, width = (int)(rnd() % 30);
        const char *fl = flags[rnd() % 9];
        if (prec < 0)
            snprintf(fmt, sizeof fmt, "%%%s%d%c", fl, width, conv);
        else
            snprintf(fmt, sizeof fmt, "%%%s%d.%d%c", fl, width, prec, conv);
        same_as_glibc(fmt, v);
    }
    for (int k = 0; k < 100000; k++) {
        static const char *flags[] = {"", "#", "+", " ", "-", "0", "+0", "#0", "-#", "- +"};
        static const char *lens[] = {"", "hh", "h", "l", "ll", "z", "j", "t"};
        char conv = "diuxXo"[rnd() % 6];
        int prec = (int)(rnd() % 25) - 1, width = (int)(rnd() % 30);
        const char *len = lens[rnd() % 8];
        const char *fl = flags[rnd() % 10];
        if (prec < 0)
            snprintf(fmt, sizeof fmt, "%%%s%d%s%c", fl, width, len, conv);
        else
            snprintf(fmt, sizeof fmt, "%%%s%d.%d%s%c", fl, width, prec, len, conv);
        uint64_t v = rnd();
        if (rnd() % 4 == 0)
            v %= 1000;
        if (rnd() % 8 == 0)
            v = 0;
        if (!*len || !strcmp(len, "hh") || !strcmp(len, "h"))
            same_as_glibc(fmt, (int)v);
        else
            same_as_glibc(fmt, (long long)v);
    }

    int r = t_snprintf(buf, 8, "%s", "hello world");
    CHECK(r == 11 && strcmp(buf, "hello w") == 0, "truncation: %d [%s]", r, buf);
    CHECK(t_snprintf(NULL, 0, "%d", 12345) == 5, "size 0 counts");
    memset(buf, 'x', sizeof buf);
    r = t_snprintf(buf, 1, "abc");
    CHECK(r == 3 && buf[0] == 0 && buf[1] == 'x', "size 1 writes only the NUL");
}

/* ---- strings ---------------------------------------------------------------------- */

static int sign(int x) { return (x > 0) - (x < 0); }

static void test_strings(void) {
    char a[256], ref[256];
    for (int n = 0; n < 200; n++)
        for (int off = 0; off < 8; off++) {
            for (int i = 0; i < 256; i++)
                a[i] = ref[i] = (char)i;
            size_t m = (size_t)n < 90 ? (size_t)n : 90; /* no overlap */
            t_memcpy(a + 150 + off, a + 3, m);
            memcpy(ref + 150 + off, ref + 3, m);
            CHECK(!memcmp(a, ref, 256), "memcpy n=%d off=%d", n, off);
            memmove(ref + off, ref + 5, n);
            t_memmove(a + off, a + 5, n);
            CHECK(!memcmp(a, ref, 256), "memmove forwards n=%d off=%d", n, off);
            memmove(ref + 5 + off, ref + 5, n);
            t_memmove(a + 5 + off, a + 5, n);
            CHECK(!memcmp(a, ref, 256), "memmove backwards n=%d off=%d", n, off);
            memset(ref + off, 0xab, n);
            t_memset(a + off, 0x1ab, n);
            CHECK(!memcmp(a, ref, 256), "memset n=%d off=%d", n, off);
        }
    CHECK(t_memcmp("abc", "abd", 3) < 0 && t_memcmp("abd", "abc", 3) > 0 &&
              t_memcmp("abc", "abc", 3) == 0 && t_memcmp("\xff", "\x01", 1) > 0,
          "memcmp");
    const char *h = "hello";
    CHECK(t_memchr(h, 'l', 5) == h + 2 && !t_memchr(h, 'z', 5) && !t_memchr(h, 'o', 4), "memchr");
    CHECK(t_strlen("") == 0 && t_strlen("abc") == 3 && t_strnlen("abc", 2) == 2 &&
              t_strnlen("abc", 10) == 3,
          "strlen/strnlen");
    static const char *strs[] = {"", "a", "ab", "abc", "abd", "b", "\xff", "\x01", "abcdef"};
    for (int i = 0; i < 9; i++)
        for (int j = 0; j < 9; j++) {
            CHECK(sign(strcmp(strs[i], strs[j])) == sign(t_strcmp(strs[i], strs[j])),
                  "strcmp %d %d", i, j);
            for (size_t n = 0; n < 5; n++)
                CHECK(sign(strncmp(strs[i], strs[j], n)) == sign(t_strncmp(strs[i], strs[j], n)),
                      "strncmp %d %d %zu", i, j, n);
        }
    t_strcpy(a, "abc");
    CHECK(!strcmp(a, "abc"), "strcpy");
    memset(a, 'x', 10);
    t_strncpy(a, "ab", 5);
    CHECK(!memcmp(a, "ab\0\0\0xxxxx", 10), "strncpy pads with NULs");
    memset(a, 'x', 10);
    t_strncpy(a, "abcdef", 3);
    CHECK(!memcmp(a, "abcxxxx", 7), "strncpy truncates without a NUL");
    t_strcpy(a, "ab");
    t_strcat(a, "cd");
    CHECK(!strcmp(a, "abcd"), "strcat");
    t_strncat(a, "efgh", 2);
    CHECK(!strcmp(a, "abcdef"), "strncat");
    h = "hello world";
    CHECK(t_strchr(h, 'o') == h + 4 && t_strrchr(h, 'o') == h + 7 && t_strchr(h, 0) == h + 11 &&
              t_strrchr(h, 0) == h + 11 && !t_strchr(h, 'z') && !t_strrchr(h, 'z'),
          "strchr/strrchr");
    CHECK(t_strstr(h, "wor") == h + 6 && t_strstr(h, "") == h && !t_strstr(h, "worlds") &&
              t_strstr(h, "d") == h + 10 && t_strstr("aaab", "aab") != NULL,
          "strstr");
    uint8_t *heap = aligned_alloc(4096, 1 << 16);
    t_ab__heap_init(heap, 1 << 16);
    char *d = t_strdup("dup");
    CHECK(d && !strcmp(d, "dup"), "strdup");
    t_free(d);
    d = t_strndup("duplicate", 3);
    CHECK(d && !strcmp(d, "dup"), "strndup");
    t_free(d);
    free(heap);

    static const char *nums[] = {"0", "123", "-123", "  +42x", "0x1f", "0X1F", "017", "0x",
                                 "0xg", "", "  ", "-", "9223372036854775807",
                                 "9223372036854775808", "-9223372036854775808",
                                 "-9223372036854775809", "18446744073709551615",
                                 "18446744073709551616", "-1", "zz", "  -0x10", "1010"};
    static const int bases[] = {0, 2, 8, 10, 16, 36};
    for (size_t i = 0; i < sizeof nums / sizeof *nums; i++)
        for (int k = 0; k < 6; k++) {
            char *e1, *e2;
            long x = strtol(nums[i], &e1, bases[k]), y = t_strtol(nums[i], &e2, bases[k]);
            CHECK(x == y && e1 == e2, "strtol(\"%s\", %d): %ld vs %ld", nums[i], bases[k], x, y);
            unsigned long long u = strtoull(nums[i], &e1, bases[k]);
            unsigned long long v = t_strtoull(nums[i], &e2, bases[k]);
            CHECK(u == v && e1 == e2, "strtoull(\"%s\", %d): %llu vs %llu", nums[i], bases[k], u,
                  v);
        }
}

/* ---- heap ------------------------------------------------------------------------------ */

static void test_heap(void) {
    const size_t hs = 4 << 20;
    uint8_t *heap = aligned_alloc(4096, hs);
    t_ab__heap_init(heap, hs);
    CHECK(t_ab__heap_check() == hs - 16, "a fresh heap is one free chunk");

    /* random malloc/calloc/realloc/free against a model of the contents */
    enum { N = 2000 };
    static struct {
        uint8_t *p;
        size_t n;
        uint8_t tag;
    } live[N];
    for (long it = 0; it < 300000; it++) {
        int i = (int)(rnd() % N), op = (int)(rnd() % 3);
        if (live[i].p) {
            for (size_t k = 0; k < live[i].n; k++)
                if (live[i].p[k] != (uint8_t)(live[i].tag + k)) {
                    CHECK(0, "block %d corrupted at %zu", i, k);
                    return;
                }
            if (op == 0) {
                size_t n = rnd() % 3 == 0 ? rnd() % 20000 : rnd() % 300;
                uint8_t *q = t_realloc(live[i].p, n);
                if (n == 0) {
                    live[i].p = NULL;
                    continue;
                }
                if (!q)
                    continue; /* the old block is intact */
                CHECK(((uintptr_t)q & 15) == 0, "realloc alignment");
                size_t keep = n < live[i].n ? n : live[i].n;
                for (size_t k = 0; k < keep; k++)
                    if (q[k] != (uint8_t)(live[i].tag + k)) {
                        CHECK(0, "realloc lost data");
                        return;
                    }
                for (size_t k = keep; k < n; k++)
                    q[k] = (uint8_t)(live[i].tag + k);
                live[i].p = q;
                live[i].n = n;
            } else {
                t_free(live[i].p);
                live[i].p = NULL;
            }
        } else {
            size_t n = rnd() % 10 == 0 ? rnd() % 100000 : rnd() % 512;
            uint8_t *p = op == 2 ? t_calloc(1, n) : t_malloc(n);
            if (!p)
                continue;
            CHECK(((uintptr_t)p & 15) == 0 && p >= heap && p + n <= heap + hs,
                  "block aligned and inside the heap");
            if (op == 2)
                for (size_t k = 0; k < n; k++)
                    if (p[k]) {
                        CHECK(0, "calloc memory not zeroed");
                        break;
                    }
            live[i].p = p;
            live[i].n = n;
            live[i].tag = (uint8_t)rnd();
            for (size_t k = 0; k < n; k++)
                p[k] = (uint8_t)(live[i].tag + k);
        }
        if (it % 1000 == 0)
            t_ab__heap_check();
    }
    for (int i = 0; i < N; i++)
        t_free(live[i].p);
    CHECK(t_ab__heap_check() == hs - 16, "everything freed coalesces into one chunk");

    /* exhaustion */
    CHECK(!t_malloc(hs) && !t_malloc(SIZE_MAX) && !t_calloc(SIZE_MAX / 2, 4),
          "too large requests return NULL");
    void *big = t_malloc(hs - 16 - 8);
    CHECK(big != NULL, "the whole heap in one block");
    CHECK(t_malloc(1) == NULL, "an exhausted heap returns NULL");
    t_free(big);
    size_t cap = hs / 32, np = 0;
    void **ps = malloc(sizeof(void *) * cap);
    while (np < cap && (ps[np] = t_malloc(24)))
        np++;
    CHECK(np == (hs - 16) / 32, "minimum-size blocks fill the heap exactly (%zu)", np);
    for (size_t k = 0; k < np; k += 2)
        t_free(ps[k]);
    for (size_t k = 1; k < np; k += 2)
        t_free(ps[k]);
    free(ps);
    CHECK(t_ab__heap_check() == hs - 16, "and coalesce back into one chunk");

    /* misuse aborts the guest */
    void *p = t_malloc(10);
    t_free(p);
    CHECK(ABORTS(t_free(p)) && strstr(last_abort, "free()"), "double free: %s", last_abort);
    CHECK(ABORTS(t_free(heap + 1000003)), "misaligned pointer");
    int local;
    CHECK(ABORTS(t_free(&local)), "pointer outside the heap");
    CHECK(ABORTS(t_realloc(&local, 5)) && strstr(last_abort, "realloc()"), "realloc: %s",
          last_abort);
    t_free(NULL);
    CHECK(t_realloc(t_malloc(5), 0) == NULL, "realloc(p, 0) frees");
    CHECK(t_ab__heap_check() == hs - 16, "heap intact after the aborted calls");

    t_ab__heap_init(NULL, 0);
    CHECK(t_malloc(1) == NULL, "no heap: malloc returns NULL");
    free(heap);
}

/* ---- messages and host calls --------------------------------------------------------- */

static void put32(uint8_t *p, uint32_t v) { memcpy(p, &v, 4); }

static void test_messages(void) {
    static uint8_t out[64];
    t_ab__out = out;
    t_ab__out_size = sizeof out;
    uint32_t len;
    size_t n = t_ab__put_messagef(1, "%s", "hi");
    memcpy(&len, out + 1, 4);
    CHECK(n == 8 && len == 2 && !memcmp(out + 5, "hi", 3), "message record");

    /* 58 bytes fit (64 - 1 - 4 - NUL): a 2-byte character at 57..58 is cut */
    char s[200];
    memset(s, 'a', 57);
    strcpy(s + 57, "\xc3\xa9\xc3\xa9");
    t_ab__put_messagef(1, "%s", s);
    memcpy(&len, out + 1, 4);
    CHECK(len == 57 && out[5 + 57] == 0, "truncated on a character boundary: %u", len);
    t_ab__put_messagef(1, "a\xff" "b\xc3(\xed\xa0\x80z");
    memcpy(&len, out + 1, 4);
    CHECK(len == 9 && !memcmp(out + 5, "a?b?(???z", 10), "invalid UTF-8 replaced: [%.*s]",
          (int)len, out + 5);

    static const char *valid[] = {"", "abc", "\xc3\xa9", "\xe2\x82\xac", "\xf0\x9f\x98\x80",
                                  "\xf4\x8f\xbf\xbf"};
    static const char *invalid[] = {"\x80", "\xc0\x80", "\xc1\xbf", "\xe0\x80\x80",
                                    "\xed\xa0\x80", "\xf4\x90\x80\x80", "\xf5\x80\x80\x80",
                                    "\xc3", "\xe2\x82", "\xff"};
    for (int i = 0; i < 6; i++)
        CHECK(t_ab__utf8_valid_prefix((const uint8_t *)valid[i], strlen(valid[i])) ==
                  strlen(valid[i]),
              "valid UTF-8 #%d", i);
    for (int i = 0; i < 10; i++)
        CHECK(t_ab__utf8_valid_prefix((const uint8_t *)invalid[i], strlen(invalid[i])) == 0,
              "invalid UTF-8 #%d", i);

    t_ab_log(20, "x=%d", 5);
    CHECK(last_port == 0xE3 && last_n == 9 && out[0] == 20 && !memcmp(out + 5, "x=5", 4),
          "log record");
    static const int levels[][2] = {{-5, 10}, {0, 10}, {15, 10}, {25, 20}, {30, 30}, {99, 40}};
    for (int i = 0; i < 6; i++) {
        t_ab_log(levels[i][0], "x");
        CHECK(out[0] == levels[i][1], "level %d sent as %d", levels[i][0], out[0]);
    }

    /* host calls */
    static uint8_t big[4096];
    t_ab__out = big;
    t_ab__out_size = sizeof big;
    const size_t hs = 1 << 20;
    uint8_t *heap = aligned_alloc(4096, hs);
    t_ab__heap_init(heap, hs);
    ab_value r;

    t_ab__in_call = false;
    CHECK(t_ab_call_host("f", NULL, 0, &r) == -1 && r.type == 4 && strstr(r.buf.ptr, "outside"),
          "no host calls outside a guest call");
    t_ab_value_free(&r);
    t_ab__in_call = true;

    /* the request as encoded */
    reply_len = 0;
    reply[reply_len++] = 0; /* OK */
    reply[reply_len++] = 2; /* int */
    int64_t v = 42;
    memcpy(reply + reply_len, &v, 8);
    reply_len += 8;
    ab_value args[3] = {{.type = 2, .i = -7}, {.type = 4, .buf = {"h\xc3\xa9llo", 6}},
                        {.type = 3, .f = 1.5}};
    uint8_t sent[64];
    size_t w = 0;
    put32(sent + w, 3);
    memcpy(sent + w + 4, "add", 4);
    w += 8;
    sent[w++] = 3;
    sent[w++] = 2;
    memcpy(sent + w, &(int64_t){-7}, 8);
    w += 8;
    sent[w++] = 4;
    put32(sent + w, 6);
    memcpy(sent + w + 4, "h\xc3\xa9llo", 7);
    w += 11;
    sent[w++] = 3;
    memcpy(sent + w, &(double){1.5}, 8);
    w += 8;
    /* capture the request before the fake host overwrites it: reply with the
     * same bytes first, then check them */
    memcpy(reply, sent, w);
    size_t saved_len = reply_len;
    reply_len = 0; /* leave the request in place */
    t_ab_call_host("add", args, 3, &r);
    CHECK(last_port == 0xE2 && last_n == w && !memcmp(big, sent, w), "request encoding");
    t_ab_value_free(&r);
    reply_len = saved_len;
    reply[0] = 0;
    reply[1] = 2;
    memcpy(reply + 2, &v, 8);
    CHECK(t_ab_call_host("add", args, 3, &r) == 0 && r.type == 2 && r.i == 42, "int reply");

    reply_len = 0;
    reply[reply_len++] = 0;
    reply[reply_len++] = 4;
    put32(reply + reply_len, 3);
    memcpy(reply + reply_len + 4, "abc", 4);
    reply_len += 8;
    CHECK(t_ab_call_host("s", NULL, 0, &r) == 0 && r.type == 4 && r.buf.len == 3 &&
              !strcmp(r.buf.ptr, "abc") && (const uint8_t *)r.buf.ptr >= heap &&
              (const uint8_t *)r.buf.ptr < heap + hs,
          "str reply copied to the heap");
    t_ab_value_free(&r);
    CHECK(r.type == 0, "ab_value_free resets the value");

    reply_len = 0;
    reply[reply_len++] = 1;
    put32(reply + reply_len, 4);
    memcpy(reply + reply_len + 4, "boom", 5);
    reply_len += 9;
    CHECK(t_ab_call_host("e", NULL, 0, &r) == -1 && r.type == 4 && !strcmp(r.buf.ptr, "boom"),
          "error reply");
    t_ab_value_free(&r);

    reply[0] = 0;
    reply[1] = 4;
    put32(reply + 2, 3);
    memcpy(reply + 6, "abcX", 4);
    reply_len = 10;
    CHECK(t_ab_call_host("m", NULL, 0, &r) == -1 && strstr(r.buf.ptr, "malformed"),
          "a str without its NUL is rejected");
    t_ab_value_free(&r);
    reply[0] = 7;
    reply_len = 1;
    CHECK(t_ab_call_host("m", NULL, 0, &r) == -1 && strstr(r.buf.ptr, "status 7"),
          "unknown reply status");
    t_ab_value_free(&r);
    reply[0] = 0;
    reply[1] = 1;
    reply[2] = 1;
    reply_len = 3;
    int err = 5;
    CHECK(t_ab_call_host_int("b", 3, &err) == 1 && err == 0, "bool reply counts as an int");
    reply[1] = 0;
    reply_len = 2;
    CHECK(t_ab_call_host_int("n", 3, &err) == 0 && err == 1, "None is not an int");
    CHECK(t_ab_call_host("", NULL, 0, &r) == -1, "empty name");
    t_ab_value_free(&r);
    ab_value many[17] = {0};
    CHECK(t_ab_call_host("x", many, 17, &r) == -1 && strstr(r.buf.ptr, "too many"),
          "more than 16 arguments");
    t_ab_value_free(&r);
    static char huge[5000];
    memset(huge, 'a', sizeof huge - 1);
    ab_value hv = {.type = 4, .buf = {huge, sizeof huge - 1}};
    CHECK(t_ab_call_host("x", &hv, 1, &r) == -1 && strstr(r.buf.ptr, "do not fit"),
          "arguments larger than the output buffer");
    t_ab_value_free(&r);
    CHECK(t_ab__heap_check() == hs - 16, "host calls leak nothing");
    free(heap);
}

int main(void) {
    static uint8_t out[4096];
    setvbuf(stdout, NULL, _IONBF, 0);
    t_ab__out = out;
    t_ab__out_size = sizeof out;
    test_printf();
    test_strings();
    test_heap();
    test_messages();
    printf("%d checks, %d failures\n", checks, failures);
    return failures != 0;
}
