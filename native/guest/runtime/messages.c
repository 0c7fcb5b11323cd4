/*
 * Log and abort records, and the message encoding they share with the
 * dispatcher's error results.
 */
#include "internal.h"

#include <limits.h>

size_t ab__utf8_valid_prefix(const uint8_t *s, size_t n) {
    size_t i = 0;
    while (i < n) {
        uint8_t c = s[i];
        if (c < 0x80) {
            i++;
            continue;
        }
        size_t len;
        uint32_t cp;
        if (c >= 0xc2 && c <= 0xdf) {
            len = 2;
            cp = c & 0x1f;
        } else if (c >= 0xe0 && c <= 0xef) {
            len = 3;
            cp = c & 0x0f;
        } else if (c >= 0xf0 && c <= 0xf4) {
            len = 4;
            cp = c & 0x07;
        } else {
            return i;
        }
        if (len > n - i)
            return i;
        for (size_t k = 1; k < len; k++) {
            if ((s[i + k] & 0xc0) != 0x80)
                return i;
            cp = (cp << 6) | (s[i + k] & 0x3f);
        }
        /* overlong forms, UTF-16 surrogates, beyond U+10FFFF */
        if ((len == 3 && cp < 0x800) || (len == 4 && (cp < 0x10000 || cp > 0x10ffff)) ||
            (cp >= 0xd800 && cp <= 0xdfff))
            return i;
        i += len;
    }
    return n;
}

/* Make s[0..*n) valid UTF-8 in place: a sequence cut by truncation at the end
 * is dropped, any other invalid byte becomes '?'. */
static void sanitize_utf8(uint8_t *s, size_t *n, bool truncated) {
    size_t len = *n;
    if (truncated) {
        /* back off over an incomplete sequence at the end */
        size_t k = 0;
        while (k < 3 && k < len && (s[len - 1 - k] & 0xc0) == 0x80)
            k++;
        if (k < len && s[len - 1 - k] >= 0xc0) {
            uint8_t lead = s[len - 1 - k];
            size_t need = lead >= 0xf0 ? 4 : lead >= 0xe0 ? 3 : 2;
            if (need > k + 1)
                len -= k + 1;
        }
    }
    size_t i = 0;
    while (i < len) {
        i += ab__utf8_valid_prefix(s + i, len - i);
        if (i < len)
            s[i++] = '?';
    }
    *n = len;
}

size_t ab__put_message(size_t offset, const char *fmt, va_list ap) {
    if (ab__out_size < offset + 5)
        return 0;
    char *msg = (char *)ab__out + offset + 4;
    size_t cap = ab__out_size - offset - 4; /* including the NUL */
    if (cap > INT_MAX) /* vsnprintf's limit, far above any record size */
        cap = INT_MAX;
    int r = vsnprintf(msg, cap, fmt, ap);
    size_t len = r < 0 ? 0 : (size_t)r;
    bool truncated = len > cap - 1;
    if (truncated)
        len = cap - 1;
    sanitize_utf8((uint8_t *)msg, &len, truncated);
    msg[len] = 0;
    uint32_t len32 = (uint32_t)len;
    memcpy(ab__out + offset, &len32, 4);
    return offset + 4 + len + 1;
}

size_t ab__put_messagef(size_t offset, const char *fmt, ...) {
    va_list ap;
    va_start(ap, fmt);
    size_t n = ab__put_message(offset, fmt, ap);
    va_end(ap);
    return n;
}

void ab_vlog(int level, const char *fmt, va_list ap) {
    if (ab__out_size < 6)
        return;
    /* The wire knows four levels; round anything else down to one of them. */
    ab__out[0] = level >= AB_LOG_ERROR     ? AB_LOG_ERROR
                 : level >= AB_LOG_WARNING ? AB_LOG_WARNING
                 : level >= AB_LOG_INFO    ? AB_LOG_INFO
                                           : AB_LOG_DEBUG;
    size_t n = ab__put_message(1, fmt, ap);
    AB__OUT(AB_PORT_LOG, n);
}

void ab_log(int level, const char *fmt, ...) {
    va_list ap;
    va_start(ap, fmt);
    ab_vlog(level, fmt, ap);
    va_end(ap);
}

_Noreturn void ab_vabort(int64_t code, const char *fmt, va_list ap) {
    size_t n = 0;
    if (ab__out_size >= 8 + 5) {
        memcpy(ab__out, &code, 8);
        n = ab__put_message(8, fmt, ap);
    }
    /* The host never resumes an aborted guest; if it ever did, exit again. */
    for (;;)
        AB__OUT(AB_PORT_ABORT, n);
}

_Noreturn void ab_abort(int64_t code, const char *fmt, ...) {
    va_list ap;
    va_start(ap, fmt);
    ab_vabort(code, fmt, ap);
}
