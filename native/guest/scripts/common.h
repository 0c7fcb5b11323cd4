/* Shared by the script runtimes (js.c, lua.c): the path of the value being
 * converted (for error messages), UTF-8 checking, owned ab_value builders
 * and the result envelope the Python side (aionub._scripts) unwraps:
 *
 *     [true, value]              the script ran; value is its result
 *     [false, message, stack]    the script raised; stack may be ""
 *
 * Host functions are reached through the one host function SCRIPT_HOST
 * ("script.host"), which aionub._scripts provides: it takes (name, args)
 * and answers [true, value] or [false, "ExceptionType: message"], so a
 * failing host function, or a result that cannot be sent, becomes an
 * exception in the script instead of a HostFunctionError of the whole call.
 * (An ERROR reply, which would fail the call, only comes when script.host
 * itself is missing or broken: that is an exception in the script too.)
 */
#ifndef AIONUB_SCRIPTS_COMMON_H
#define AIONUB_SCRIPTS_COMMON_H

#include <aionub_guest.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define SCRIPT_HOST "script.host"
/* User values nest at most this deep: the envelope adds one level and the
 * wire allows AB_MAX_DEPTH. */
#define SCRIPT_MAX_DEPTH 60

/* ---- the path of the value being converted ---------------------------------- */

static char conv_path[1024];
static size_t conv_path_len;
static char conv_error[1400];

static void path_reset(const char *root) {
    conv_path_len = (size_t)snprintf(conv_path, sizeof conv_path, "%s", root);
    if (conv_path_len >= sizeof conv_path)
        conv_path_len = sizeof conv_path - 1;
}

/* Appends to the path; returns the old length for path_pop. */
static size_t path_push(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
static size_t path_push(const char *fmt, ...) {
    size_t old = conv_path_len;
    if (conv_path_len < sizeof conv_path - 1) {
        va_list ap;
        va_start(ap, fmt);
        int n = vsnprintf(conv_path + conv_path_len, sizeof conv_path - conv_path_len, fmt, ap);
        va_end(ap);
        if (n > 0)
            conv_path_len += (size_t)n;
        if (conv_path_len >= sizeof conv_path)
            conv_path_len = sizeof conv_path - 1;
    }
    return old;
}

static void path_pop(size_t old) {
    conv_path_len = old;
    conv_path[old] = '\0';
}

/* Pushes a dict key: `.name` for identifiers, `["..."]` otherwise (cut short). */
static size_t path_push_key(const char *key, size_t len) {
    bool ident = len > 0 && len < 64 && !(key[0] >= '0' && key[0] <= '9');
    for (size_t i = 0; ident && i < len; i++) {
        char c = key[i];
        ident = (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') || c == '_' || c == '$';
    }
    if (ident)
        return path_push(".%.*s", (int)len, key);
    size_t shown = len > 40 ? 40 : len;
    char buf[48];
    size_t j = 0;
    for (size_t i = 0; i < shown; i++)
        buf[j++] = (key[i] == '"' || key[i] == '\\' || (unsigned char)key[i] < 0x20) ? '?' : key[i];
    buf[j] = '\0';
    return path_push("[\"%s%s\"]", buf, len > shown ? "..." : "");
}

/* Sets conv_error to "<path>: <what>"; returns -1. */
static int conv_fail(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
static int conv_fail(const char *fmt, ...) {
    char what[256];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(what, sizeof what, fmt, ap);
    va_end(ap);
    snprintf(conv_error, sizeof conv_error, "%s: %s", conv_path, what);
    return -1;
}

/* ---- UTF-8 ----------------------------------------------------------------------- */

/* Strict UTF-8: no overlong forms, no surrogates, nothing above U+10FFFF. */
static bool utf8_valid(const unsigned char *s, size_t n) {
    size_t i = 0;
    while (i < n) {
        unsigned char c = s[i];
        if (c < 0x80) {
            i++;
            continue;
        }
        size_t need;
        uint32_t cp;
        if (c >= 0xC2 && c <= 0xDF) {
            need = 1;
            cp = c & 0x1F;
        } else if (c >= 0xE0 && c <= 0xEF) {
            need = 2;
            cp = c & 0x0F;
        } else if (c >= 0xF0 && c <= 0xF4) {
            need = 3;
            cp = c & 0x07;
        } else {
            return false;
        }
        if (n - i <= need)
            return false;
        for (size_t k = 1; k <= need; k++) {
            if ((s[i + k] & 0xC0) != 0x80)
                return false;
            cp = (cp << 6) | (s[i + k] & 0x3F);
        }
        if ((need == 2 && cp < 0x800) || (need == 3 && (cp < 0x10000 || cp > 0x10FFFF)) ||
            (cp >= 0xD800 && cp <= 0xDFFF))
            return false;
        i += need + 1;
    }
    return true;
}

/* ---- owned values ----------------------------------------------------------------- */

static void *xmalloc(size_t n) {
    void *p = malloc(n ? n : 1);
    if (p == NULL)
        ab_abort(12, "the script runtime is out of memory (%zu bytes)", n);
    return p;
}

static void *xcalloc(size_t n, size_t size) {
    void *p = calloc(n ? n : 1, size);
    if (p == NULL)
        ab_abort(12, "the script runtime is out of memory (%zu items)", n);
    return p;
}

/* A str or bytes value owning a NUL-terminated copy of s[0..n). */
static ab_value owned_buf(ab_type type, const void *s, size_t n) {
    char *copy = xmalloc(n + 1);
    if (n)
        memcpy(copy, s, n);
    copy[n] = '\0';
    ab_value v = {.type = type, .owned = true};
    v.buf.ptr = copy;
    v.buf.len = n;
    return v;
}

/* ---- the result envelope ---------------------------------------------------------------- */

static ab_value envelope_ok(ab_value value) {
    ab_value *items = xcalloc(2, sizeof *items);
    items[0] = ab_bool(true);
    items[1] = value;
    return ab_owned(ab_list(items, 2));
}

static ab_value envelope_error(const char *message, size_t mlen, const char *stack, size_t slen) {
    ab_value *items = xcalloc(3, sizeof *items);
    items[0] = ab_bool(false);
    /* Messages and stacks come from the script: make them valid UTF-8. */
    items[1] = owned_buf(AB_STR, message, mlen);
    items[2] = owned_buf(AB_STR, stack, slen);
    for (int k = 1; k <= 2; k++) {
        char *p = (char *)items[k].buf.ptr;
        if (!utf8_valid((const unsigned char *)p, items[k].buf.len))
            for (size_t i = 0; i < items[k].buf.len; i++)
                if ((unsigned char)p[i] >= 0x80)
                    p[i] = '?';
    }
    return ab_owned(ab_list(items, 3));
}

/* Calls the host function `name` with the list `args` (consumed: freed
 * here) through SCRIPT_HOST. The reply is stored in *reply (free it with
 * ab_value_free when done: it is one heap block, payload included). On
 * success returns 0 with *payload pointing at the result inside *reply; on
 * an error returns -1 with *payload pointing at an AB_STR message. */
static const ab_value script_host_malformed = {.type = AB_STR, .buf = {"malformed reply from the host", 29}};
static const ab_value script_host_failed = {.type = AB_STR, .buf = {"host function failed", 20}};

static char script_host_error[1024];
static ab_value script_host_error_value;

static int script_host_call(const char *name, size_t name_len, ab_value args, ab_value *reply,
                            const ab_value **payload) {
    ab_value call_args[2] = {ab_strn(name, name_len), args};
    int rc = ab_call_host(SCRIPT_HOST, call_args, 2, reply);
    ab_value_free(&call_args[1]);
    if (rc != 0) {
        /* The reply is ab_call_host's error message (the request could not
         * be sent: arguments larger than the output buffer; or an ERROR
         * reply), which speaks of SCRIPT_HOST: name the script's host
         * function first. */
        int n = snprintf(script_host_error, sizeof script_host_error, "host.%.*s(): %.*s",
                         (int)(name_len < 200 ? name_len : 200), name,
                         (int)(reply->buf.len < 800 ? reply->buf.len : 800), (const char *)reply->buf.ptr);
        size_t len = n < 0 ? 0 : (size_t)n < sizeof script_host_error ? (size_t)n : sizeof script_host_error - 1;
        if (reply->buf.len > 800) { /* cut: drop a character that may be cut in two */
            while (len > 0 && ((unsigned char)script_host_error[len - 1] & 0xC0) == 0x80)
                len--;
            if (len > 0 && (unsigned char)script_host_error[len - 1] >= 0xC0)
                len--;
        }
        script_host_error_value = (ab_value){.type = AB_STR, .buf = {script_host_error, len}};
        *payload = &script_host_error_value;
        return -1;
    }
    if (reply->type == AB_LIST && reply->list.len == 2 && reply->list.items[0].type == AB_BOOL) {
        *payload = &reply->list.items[1];
        if (reply->list.items[0].b)
            return 0;
        if ((*payload)->type != AB_STR)
            *payload = &script_host_failed;
        return -1;
    }
    *payload = &script_host_malformed;
    return -1;
}

#endif
