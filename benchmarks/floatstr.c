/* A float- and string-heavy workload for bench_floatstr.py, compiled both
 * natively (a shared library called through ctypes) and as a guest
 * (floatstr_guest.c includes this file). Plain C and libc only.
 *
 * floatstr_run(n, seed): n pseudo-random doubles are printed with "%.17g"
 * and read back with strtod (each must round-trip), printed again with
 * "%.6e" and read back, sorted as numbers and as strings (qsort), and fed
 * through some libm. The result line holds a hash of the sorted strings,
 * the count of failed round trips (0) and the libm sum: the first two must
 * be identical on both sides, the sum equal to about 1e-12 (two libms). */
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

static uint64_t next_random(uint64_t *s) { /* xorshift64* */
    *s ^= *s >> 12;
    *s ^= *s << 25;
    *s ^= *s >> 27;
    return *s * 0x2545F4914F6CDD1DULL;
}

static int by_value(const void *a, const void *b) {
    double x = *(const double *)a, y = *(const double *)b;
    return (x > y) - (x < y);
}

static int by_text(const void *a, const void *b) {
    return strcmp(*(char *const *)a, *(char *const *)b);
}

const char *floatstr_run(int64_t n, int64_t seed) {
    static char result[128];
    uint64_t state = (uint64_t)seed * 2654435761u + 1;
    double *xs = malloc((size_t)n * sizeof *xs);
    char *text = malloc((size_t)n * 32);
    char **strs = malloc((size_t)n * sizeof *strs);
    if (xs == NULL || text == NULL || strs == NULL) {
        snprintf(result, sizeof result, "out of memory");
        goto out;
    }
    for (int64_t i = 0; i < n; i++) {
        uint64_t r = next_random(&state);
        double mant = (double)(r >> 11) * 0x1p-53 + 0.5;
        xs[i] = ldexp(mant, (int)(r % 80) - 40) * ((r >> 7) & 1 ? -1.0 : 1.0);
    }
    int64_t bad = 0;
    size_t off = 0;
    for (int64_t i = 0; i < n; i++) {
        int len = snprintf(text + off, 32, "%.17g", xs[i]);
        strs[i] = text + off;
        off += (size_t)len + 1;
        char *end;
        bad += strtod(strs[i], &end) != xs[i] || *end != '\0';
        char short_form[32];
        snprintf(short_form, sizeof short_form, "%.6e", xs[i]);
        double y = strtod(short_form, &end);
        bad += fabs(y - xs[i]) > fabs(xs[i]) * 1e-6;
    }
    double sum = 0;
    for (int64_t i = 0; i < n; i++) {
        double x = xs[i], ax = fabs(x);
        sum += sin(x) * exp(-ax * 1e-3) + log1p(ax) + atan2(x, 1.0) + pow(ax, 0.3) + sqrt(ax) / (1.0 + cos(x) * cos(x));
    }
    qsort(xs, (size_t)n, sizeof *xs, by_value);
    qsort(strs, (size_t)n, sizeof *strs, by_text);
    for (int64_t i = 1; i < n; i++)
        bad += xs[i - 1] > xs[i];
    uint64_t hash = 0xcbf29ce484222325ULL; /* FNV-1a over the sorted strings */
    for (int64_t i = 0; i < n; i++)
        for (const unsigned char *p = (const unsigned char *)strs[i]; *p; p++)
            hash = (hash ^ *p) * 0x100000001b3ULL;
    snprintf(result, sizeof result, "%016llx %lld %.15e", (unsigned long long)hash, (long long)bad, sum);
out:
    free(xs);
    free(text);
    free(strs);
    return result;
}

/* floatstr_run timed from the inside (CLOCK_MONOTONIC, ns), so that every
 * side is measured the same way whatever it takes to call it. */
int64_t floatstr_timed(int64_t n, int64_t seed) {
    struct timespec a, b;
    clock_gettime(CLOCK_MONOTONIC, &a);
    const char *r = floatstr_run(n, seed);
    clock_gettime(CLOCK_MONOTONIC, &b);
    if (r[0] == 'o') /* "out of memory" */
        return -1;
    return (int64_t)(b.tv_sec - a.tv_sec) * 1000000000 + (b.tv_nsec - a.tv_nsec);
}
