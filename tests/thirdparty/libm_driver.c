/* The guest's libm, strtod and printf, in bulk, for tests/test_libm.py.
 * Arrays of doubles travel as bytes (native byte order); strings as
 * NUL-terminated entries, one after the other. */
#include <aionub_guest.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static uint8_t *out;
static size_t out_cap;

static uint8_t *reserve(size_t n) {
    if (n > out_cap) {
        free(out);
        out = malloc(n);
        if (out == NULL)
            ab_abort(12, "no memory for %zu bytes", n);
        out_cap = n;
    }
    return out;
}

static double get(const uint8_t *data, size_t i) {
    double x;
    memcpy(&x, data + 8 * i, 8);
    return x;
}

/* unary("sin", doubles) == doubles of sin(x) */
static ab_bytes unary(const char *fn, const uint8_t *data, size_t len) {
    double (*f)(double) = NULL;
    if (strcmp(fn, "sin") == 0) f = sin;
    else if (strcmp(fn, "cos") == 0) f = cos;
    else if (strcmp(fn, "tan") == 0) f = tan;
    else if (strcmp(fn, "exp") == 0) f = exp;
    else if (strcmp(fn, "log") == 0) f = log;
    else ab_abort(22, "unary: unknown function %s", fn);
    size_t n = len / 8;
    uint8_t *dst = reserve(8 * n);
    for (size_t i = 0; i < n; i++) {
        double y = f(get(data, i));
        memcpy(dst + 8 * i, &y, 8);
    }
    return (ab_bytes){dst, 8 * n};
}
AB_EXPORT(unary, AB_BYTES, AB_STR, AB_BYTES);

/* binary("pow", x0 y0 x1 y1 ...) == doubles of pow(x, y) */
static ab_bytes binary(const char *fn, const uint8_t *data, size_t len) {
    double (*f)(double, double) = NULL;
    if (strcmp(fn, "pow") == 0) f = pow;
    else if (strcmp(fn, "atan2") == 0) f = atan2;
    else ab_abort(22, "binary: unknown function %s", fn);
    size_t n = len / 16;
    uint8_t *dst = reserve(8 * n);
    for (size_t i = 0; i < n; i++) {
        double y = f(get(data, 2 * i), get(data, 2 * i + 1));
        memcpy(dst + 8 * i, &y, 8);
    }
    return (ab_bytes){dst, 8 * n};
}
AB_EXPORT(binary, AB_BYTES, AB_STR, AB_BYTES);

/* parse(b"1.5\0-2e3\0") == doubles of strtod(s); a string strtod does not
 * consume entirely aborts the guest (the test sends only valid numbers). */
static ab_bytes parse(const uint8_t *data, size_t len) {
    size_t n = 0;
    for (size_t i = 0; i < len; i++)
        n += data[i] == 0;
    uint8_t *dst = reserve(8 * n);
    const char *s = (const char *)data;
    for (size_t i = 0; i < n; i++) {
        char *end;
        double x = strtod(s, &end);
        if (*end != '\0')
            ab_abort(22, "strtod stopped at %zu in \"%s\"", (size_t)(end - s), s);
        memcpy(dst + 8 * i, &x, 8);
        s = end + 1;
    }
    return (ab_bytes){dst, 8 * n};
}
AB_EXPORT(parse, AB_BYTES, AB_BYTES);

/* format(doubles, "%.17g") == b"...\0...\0" */
static ab_bytes format(const char *fmt, const uint8_t *data, size_t len) {
    size_t n = len / 8;
    uint8_t *dst = reserve(48 * n);
    size_t used = 0;
    for (size_t i = 0; i < n; i++) {
        int k = snprintf((char *)dst + used, 48, fmt, get(data, i));
        if (k < 0 || k >= 48)
            ab_abort(22, "snprintf(\"%s\") returned %d", fmt, k);
        used += (size_t)k + 1;
    }
    return (ab_bytes){dst, used};
}
AB_EXPORT(format, AB_BYTES, AB_STR, AB_BYTES);
