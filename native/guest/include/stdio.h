/* aionub guest SDK: <stdio.h> subset. There is no console and no file:
 * use ab_log() to send text to the host. */
#ifndef AIONUB_GUEST_STDIO_H
#define AIONUB_GUEST_STDIO_H

#include <stdarg.h>
#include <stddef.h>

/*
 * Conversions: d i u o x X c s p % f F e E g G; flags - 0 + space #; field
 * width and precision, both may be *; length modifiers hh h l ll z j t (and
 * L, converted through double). Floating-point output is exact (correctly
 * rounded, ties to even), including inf and nan. %n is not supported.
 */
int snprintf(char *restrict buf, size_t size, const char *restrict fmt, ...)
    __attribute__((format(printf, 3, 4)));
int vsnprintf(char *restrict buf, size_t size, const char *restrict fmt, va_list ap)
    __attribute__((format(printf, 3, 0)));

#endif
