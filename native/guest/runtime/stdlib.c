/* <stdlib.h> number parsing for guests (no errno: out-of-range values
 * saturate, as the C functions' return values do). */
#include "internal.h"
#include <ctype.h>
#include <limits.h>

/* Parses an unsigned magnitude; *neg gets the sign, *over whether it
 * exceeded `limit`. Returns the magnitude clamped to limit. */
static unsigned long long parse(const char *s, char **end, int base, bool *neg, bool *over,
                                unsigned long long limit) {
    const char *p = s;
    *neg = false;
    while (isspace((unsigned char)*p))
        p++;
    if (*p == '+' || *p == '-')
        *neg = *p++ == '-';
    if ((base == 0 || base == 16) && p[0] == '0' && (p[1] | 32) == 'x' &&
        isxdigit((unsigned char)p[2])) {
        p += 2;
        base = 16;
    } else if (base == 0) {
        base = p[0] == '0' ? 8 : 10;
    }
    if (base < 2 || base > 36) {
        if (end)
            *end = (char *)s;
        return 0;
    }
    unsigned long long v = 0;
    bool any = false;
    *over = false;
    for (;; p++) {
        unsigned d;
        if (isdigit((unsigned char)*p))
            d = (unsigned)(*p - '0');
        else if (isalpha((unsigned char)*p))
            d = (unsigned)((*p | 32) - 'a' + 10);
        else
            break;
        if (d >= (unsigned)base)
            break;
        any = true;
        if (v > (limit - d) / (unsigned)base)
            *over = true;
        else
            v = v * (unsigned)base + d;
    }
    if (end)
        *end = (char *)(any ? p : s);
    return *over ? limit : v;
}

unsigned long long strtoull(const char *restrict s, char **restrict end, int base) {
    bool neg, over;
    unsigned long long v = parse(s, end, base, &neg, &over, ULLONG_MAX);
    if (over)
        return ULLONG_MAX;
    return neg ? -v : v;
}

unsigned long strtoul(const char *restrict s, char **restrict end, int base) {
    return strtoull(s, end, base);
}

long long strtoll(const char *restrict s, char **restrict end, int base) {
    bool neg, over;
    /* allow one more for the magnitude of LLONG_MIN */
    unsigned long long v = parse(s, end, base, &neg, &over, (unsigned long long)LLONG_MAX + 1);
    if (neg)
        return v == (unsigned long long)LLONG_MAX + 1 ? LLONG_MIN : -(long long)v;
    return v > (unsigned long long)LLONG_MAX ? LLONG_MAX : (long long)v;
}

long strtol(const char *restrict s, char **restrict end, int base) { return strtoll(s, end, base); }
int atoi(const char *s) { return (int)strtol(s, NULL, 10); }
long atol(const char *s) { return strtol(s, NULL, 10); }
long long atoll(const char *s) { return strtoll(s, NULL, 10); }
