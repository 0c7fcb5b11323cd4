/*
 * snprintf/vsnprintf for guests.
 *
 * Floating point is converted exactly: a finite double is m * 2^e with
 * integer m, so it equals either m * 2^e (e >= 0) or m * 5^-e / 10^-e
 * (e < 0); either way a big integer in base 10^9 gives every decimal digit,
 * and rounding happens on the digit string (ties to even, like glibc in the
 * default rounding mode). At most 767 significant digits exist.
 */
#include "internal.h"
#include <limits.h>

/* ---- output sink --------------------------------------------------------------- */

typedef struct {
    char *buf;
    size_t cap; /* including the NUL */
    size_t len; /* what would have been written */
} sink;

static void put(sink *s, char c) {
    if (s->len + 1 < s->cap)
        s->buf[s->len] = c;
    s->len++;
}

static void puts_n(sink *s, const char *p, size_t n) {
    for (size_t i = 0; i < n; i++)
        put(s, p[i]);
}

static void pad(sink *s, char c, long n) {
    for (; n > 0; n--)
        put(s, c);
}

typedef struct {
    bool left, plus, space, alt, zero;
    int width;
    int prec; /* -1: none */
} spec;

/* Pads a field of `len` characters made of `prefix` (sign, 0x), `zeros`
 * leading zeros and the body, honouring width, '-' and '0'. Calls body(). */
static void field_begin(sink *s, const spec *f, const char *prefix, size_t plen, long zeros,
                        long body_len, bool zero_pad_ok) {
    long len = (long)plen + zeros + body_len;
    if (!f->left && f->zero && zero_pad_ok && f->width > len) {
        zeros += f->width - len;
        len = f->width;
    }
    if (!f->left)
        pad(s, ' ', f->width - len);
    puts_n(s, prefix, plen);
    pad(s, '0', zeros);
}

static void field_end(sink *s, const spec *f, long total) {
    if (f->left)
        pad(s, ' ', f->width - total);
}

/* ---- integers ---------------------------------------------------------------- */

static void fmt_int(sink *s, const spec *f, uint64_t v, bool neg, unsigned base, bool upper,
                    bool is_signed, char conv) {
    const char *digits = upper ? "0123456789ABCDEF" : "0123456789abcdef";
    char buf[24];
    int n = 0;
    bool nonzero = v != 0;
    if (!(v == 0 && f->prec == 0))
        do {
            buf[n++] = digits[v % base];
            v /= base;
        } while (v);
    char prefix[3] = {0};
    size_t plen = 0;
    if (is_signed) {
        if (neg)
            prefix[plen++] = '-';
        else if (f->plus)
            prefix[plen++] = '+';
        else if (f->space)
            prefix[plen++] = ' ';
    }
    if (f->alt && base == 16 && nonzero) {
        prefix[plen++] = '0';
        prefix[plen++] = upper ? 'X' : 'x';
    }
    long zeros = f->prec > n ? f->prec - n : 0;
    if (conv == 'o' && f->alt && zeros == 0 && (n == 0 || buf[n - 1] != '0'))
        zeros = 1;
    long start = (long)s->len;
    field_begin(s, f, prefix, plen, zeros, n, f->prec < 0);
    while (n > 0)
        put(s, buf[--n]);
    field_end(s, f, (long)s->len - start);
}

/* ---- floating point --------------------------------------------------------------- */

#define BIG_WORDS 90 /* 10^9-digits: 767 decimal digits need 86 */
#define MAX_DIGITS (BIG_WORDS * 9)

/* value = 0.d[0] d[1] ... d[n-1] x 10^dp; no trailing zeros; n == 0 is zero */
typedef struct {
    char d[MAX_DIGITS];
    int n;
    int dp;
} decimal;

static void big_mul(uint32_t *w, int *nw, uint32_t m) {
    uint64_t carry = 0;
    for (int i = 0; i < *nw; i++) {
        uint64_t t = (uint64_t)w[i] * m + carry;
        w[i] = (uint32_t)(t % 1000000000u);
        carry = t / 1000000000u;
    }
    while (carry) {
        w[(*nw)++] = (uint32_t)(carry % 1000000000u);
        carry /= 1000000000u;
    }
}

/* Exact decimal expansion of a finite, nonzero |x| given by its bits. */
static void to_decimal(uint64_t bits, decimal *out) {
    int ex = (int)((bits >> 52) & 0x7ff);
    uint64_t m = bits & ((1ull << 52) - 1);
    if (ex)
        m |= 1ull << 52;
    else
        ex = 1;
    int e2 = ex - 1075; /* x = m * 2^e2 */
    while (e2 < 0 && !(m & 1)) {
        m >>= 1;
        e2++;
    }
    uint32_t w[BIG_WORDS];
    int nw = 0;
    for (uint64_t t = m; t; t /= 1000000000u)
        w[nw++] = (uint32_t)(t % 1000000000u);
    int k = 0; /* decimal digits after the point */
    if (e2 > 0) {
        for (; e2 > 0; e2 -= 29)
            big_mul(w, &nw, 1u << (e2 < 29 ? e2 : 29));
    } else if (e2 < 0) {
        static const uint32_t pow5[14] = {1, 5, 25, 125, 625, 3125, 15625, 78125, 390625,
                                          1953125, 9765625, 48828125, 244140625, 1220703125};
        k = -e2;
        for (int t = k; t > 0; t -= 13)
            big_mul(w, &nw, pow5[t < 13 ? t : 13]);
    }
    int n = 0;
    char tmp[9];
    for (int i = nw - 1; i >= 0; i--) {
        uint32_t v = w[i];
        for (int j = 8; j >= 0; j--, v /= 10)
            tmp[j] = (char)('0' + v % 10);
        int j = 0;
        if (i == nw - 1)
            while (j < 8 && tmp[j] == '0')
                j++;
        for (; j < 9; j++)
            out->d[n++] = tmp[j];
    }
    out->dp = n - k;
    while (n > 0 && out->d[n - 1] == '0')
        n--;
    out->n = n;
}

/* Keeps the first r digits, rounding half to even. */
static void round_digits(decimal *x, int r) {
    if (r >= x->n)
        return;
    if (r < 0) {
        x->n = 0;
        return;
    }
    bool up;
    if (x->d[r] != '5')
        up = x->d[r] > '5';
    else /* exactly half only if nothing follows (no trailing zeros kept) */
        up = x->n > r + 1 || (r > 0 && ((x->d[r - 1] - '0') & 1));
    x->n = r;
    if (up) {
        int i = r - 1;
        while (i >= 0 && x->d[i] == '9')
            i--;
        if (i < 0) {
            x->d[0] = '1';
            x->n = 1;
            x->dp++;
        } else {
            x->d[i]++;
            x->n = i + 1;
        }
    }
    while (x->n > 0 && x->d[x->n - 1] == '0')
        x->n--;
}

static char digit_at(const decimal *x, long i) { return i >= 0 && i < x->n ? x->d[i] : '0'; }

static void fmt_float(sink *s, const spec *f, double v, char conv) {
    uint64_t bits;
    memcpy(&bits, &v, 8);
    bool neg = bits >> 63;
    bool upper = conv == 'F' || conv == 'E' || conv == 'G';
    char lc = (char)(conv | 32);
    char prefix[1] = {0};
    size_t plen = 0;
    if (neg)
        prefix[plen++] = '-';
    else if (f->plus)
        prefix[plen++] = '+';
    else if (f->space)
        prefix[plen++] = ' ';

    long start = (long)s->len;
    if (((bits >> 52) & 0x7ff) == 0x7ff) {
        const char *word = (bits & ((1ull << 52) - 1)) ? (upper ? "NAN" : "nan")
                                                       : (upper ? "INF" : "inf");
        field_begin(s, f, prefix, plen, 0, 3, false);
        puts_n(s, word, 3);
        field_end(s, f, (long)s->len - start);
        return;
    }

    static decimal x; /* ~800 bytes: keep it off the small guest stack */
    decimal *dx = &x;
    uint64_t mag = bits & ~(1ull << 63);
    if (mag) {
        to_decimal(mag, dx);
    } else {
        dx->n = 0;
        dx->dp = 1;
    }
    long prec = f->prec < 0 ? 6 : f->prec;
    bool exp_style = lc == 'e';
    if (lc == 'g') {
        long P = prec == 0 ? 1 : prec;
        if (P > MAX_DIGITS)
            P = MAX_DIGITS;
        round_digits(dx, (int)P);
        long X = dx->n ? dx->dp - 1 : 0;
        if (P > X && X >= -4) {
            prec = P - 1 - X;
        } else {
            exp_style = true;
            prec = P - 1;
        }
        if (!f->alt) {
            long have = exp_style ? (dx->n > 0 ? dx->n - 1 : 0)
                                  : (dx->n - dx->dp > 0 ? dx->n - dx->dp : 0);
            if (have < prec)
                prec = have;
        }
    }
    bool point = prec > 0 || f->alt;

    if (exp_style) {
        if (lc != 'g')
            round_digits(dx, prec + 1 > MAX_DIGITS ? MAX_DIGITS : (int)(prec + 1));
        long e10 = dx->n ? dx->dp - 1 : 0;
        char ebuf[8];
        int en = 0;
        unsigned long ae = (unsigned long)(e10 < 0 ? -e10 : e10);
        do {
            ebuf[en++] = (char)('0' + ae % 10);
            ae /= 10;
        } while (ae);
        if (en < 2)
            ebuf[en++] = '0';
        long body = 1 + point + prec + 2 + en;
        field_begin(s, f, prefix, plen, 0, body, true);
        put(s, digit_at(dx, 0));
        if (point)
            put(s, '.');
        for (long i = 1; i <= prec; i++)
            put(s, digit_at(dx, i));
        put(s, upper ? 'E' : 'e');
        put(s, e10 < 0 ? '-' : '+');
        while (en > 0)
            put(s, ebuf[--en]);
    } else {
        if (lc != 'g') {
            long r = dx->dp + prec;
            round_digits(dx, r > MAX_DIGITS ? MAX_DIGITS : r < -1 ? -1 : (int)r);
        }
        long ilen = dx->n && dx->dp > 0 ? dx->dp : 1;
        long body = ilen + point + prec;
        field_begin(s, f, prefix, plen, 0, body, true);
        if (dx->n && dx->dp > 0)
            for (long i = 0; i < dx->dp; i++)
                put(s, digit_at(dx, i));
        else
            put(s, '0');
        if (point)
            put(s, '.');
        long base = dx->n ? dx->dp : 0;
        for (long i = 0; i < prec; i++)
            put(s, digit_at(dx, base + i));
    }
    field_end(s, f, (long)s->len - start);
}

/* ---- the format loop ------------------------------------------------------------------ */

enum { LEN_NONE, LEN_HH, LEN_H, LEN_L, LEN_LL, LEN_Z, LEN_J, LEN_T, LEN_BIGL };

int vsnprintf(char *restrict buf, size_t size, const char *restrict fmt, va_list ap) {
    sink s = {buf, size, 0};
    va_list args;
    va_copy(args, ap);
    for (const char *p = fmt; *p; p++) {
        if (*p != '%') {
            put(&s, *p);
            continue;
        }
        const char *conv_start = p++;
        spec f = {.prec = -1};
        for (;; p++) {
            if (*p == '-')
                f.left = true;
            else if (*p == '+')
                f.plus = true;
            else if (*p == ' ')
                f.space = true;
            else if (*p == '#')
                f.alt = true;
            else if (*p == '0')
                f.zero = true;
            else
                break;
        }
        if (*p == '*') {
            int w = va_arg(args, int);
            if (w < 0) {
                f.left = true;
                w = w == INT_MIN ? INT_MAX : -w;
            }
            f.width = w;
            p++;
        } else {
            for (; *p >= '0' && *p <= '9'; p++)
                f.width = f.width > (INT_MAX - 9) / 10 ? INT_MAX : f.width * 10 + (*p - '0');
        }
        if (*p == '.') {
            p++;
            if (*p == '*') {
                int pr = va_arg(args, int);
                f.prec = pr < 0 ? -1 : pr;
                p++;
            } else {
                f.prec = 0;
                for (; *p >= '0' && *p <= '9'; p++)
                    f.prec = f.prec > (INT_MAX - 9) / 10 ? INT_MAX : f.prec * 10 + (*p - '0');
            }
        }
        int len = LEN_NONE;
        switch (*p) {
        case 'h':
            len = p[1] == 'h' ? (p++, LEN_HH) : LEN_H;
            p++;
            break;
        case 'l':
            len = p[1] == 'l' ? (p++, LEN_LL) : LEN_L;
            p++;
            break;
        case 'z':
            len = LEN_Z;
            p++;
            break;
        case 'j':
            len = LEN_J;
            p++;
            break;
        case 't':
            len = LEN_T;
            p++;
            break;
        case 'L':
            len = LEN_BIGL;
            p++;
            break;
        }
        char conv = *p;
        switch (conv) {
        case 'd':
        case 'i': {
            int64_t v;
            switch (len) {
            case LEN_HH:
                v = (signed char)va_arg(args, int);
                break;
            case LEN_H:
                v = (short)va_arg(args, int);
                break;
            case LEN_L:
            case LEN_LL:
            case LEN_Z:
            case LEN_J:
            case LEN_T:
                v = va_arg(args, long long);
                break;
            default:
                v = va_arg(args, int);
            }
            fmt_int(&s, &f, v < 0 ? -(uint64_t)v : (uint64_t)v, v < 0, 10, false, true, conv);
            break;
        }
        case 'u':
        case 'x':
        case 'X':
        case 'o': {
            uint64_t v;
            switch (len) {
            case LEN_HH:
                v = (unsigned char)va_arg(args, unsigned);
                break;
            case LEN_H:
                v = (unsigned short)va_arg(args, unsigned);
                break;
            case LEN_L:
            case LEN_LL:
            case LEN_Z:
            case LEN_J:
            case LEN_T:
                v = va_arg(args, unsigned long long);
                break;
            default:
                v = va_arg(args, unsigned);
            }
            unsigned base = conv == 'u' ? 10 : conv == 'o' ? 8 : 16;
            fmt_int(&s, &f, v, false, base, conv == 'X', false, conv);
            break;
        }
        case 'p': {
            void *ptr = va_arg(args, void *);
            if (!ptr) {
                spec g = f;
                g.prec = -1;
                long start = (long)s.len;
                field_begin(&s, &g, "", 0, 0, 5, false);
                puts_n(&s, "(nil)", 5);
                field_end(&s, &g, (long)s.len - start);
            } else {
                f.alt = true;
                fmt_int(&s, &f, (uintptr_t)ptr, false, 16, false, false, 'x');
            }
            break;
        }
        case 'c': {
            char c = (char)va_arg(args, int);
            long start = (long)s.len;
            field_begin(&s, &f, "", 0, 0, 1, false);
            put(&s, c);
            field_end(&s, &f, (long)s.len - start);
            break;
        }
        case 's': {
            const char *str = va_arg(args, const char *);
            if (!str)
                str = f.prec < 0 || f.prec >= 6 ? "(null)" : "";
            size_t n = f.prec < 0 ? strlen(str) : strnlen(str, (size_t)f.prec);
            long start = (long)s.len;
            field_begin(&s, &f, "", 0, 0, (long)n, false);
            puts_n(&s, str, n);
            field_end(&s, &f, (long)s.len - start);
            break;
        }
        case 'f':
        case 'F':
        case 'e':
        case 'E':
        case 'g':
        case 'G': {
            double v = len == LEN_BIGL ? (double)va_arg(args, long double) : va_arg(args, double);
            fmt_float(&s, &f, v, conv);
            break;
        }
        case '%':
            put(&s, '%');
            break;
        case 'n': /* not supported: consume the pointer, write nothing */
            (void)va_arg(args, void *);
            break;
        case 0: /* '%' at the end of the format */
            puts_n(&s, conv_start, (size_t)(p - conv_start));
            p--;
            break;
        default: /* unknown conversion: print it as written */
            puts_n(&s, conv_start, (size_t)(p - conv_start + 1));
        }
    }
    va_end(args);
    if (s.cap)
        s.buf[s.len < s.cap ? s.len : s.cap - 1] = 0;
    return s.len > INT_MAX ? -1 : (int)s.len;
}

int snprintf(char *restrict buf, size_t size, const char *restrict fmt, ...) {
    va_list ap;
    va_start(ap, fmt);
    int n = vsnprintf(buf, size, fmt, ap);
    va_end(ap);
    return n;
}
