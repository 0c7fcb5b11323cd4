/*
 * Calls from the guest to host functions: encode the request in the output
 * buffer, exit through AB_PORT_HOSTCALL, decode the reply the host left in the
 * output buffer and copy strings and bytes to the heap.
 */
#include "internal.h"

/* Error message used when the heap cannot hold the real one. It is not heap
 * memory, so ab_value_free() must recognise it. */
static const char oom_message[] = "out of memory in the guest while handling a host call";

static void set_error_text(ab_value *result, const char *msg, size_t len) {
    char *copy = malloc(len + 1);
    if (!copy) {
        *result = (ab_value){.type = AB_STR, .buf = {oom_message, sizeof oom_message - 1}};
        return;
    }
    memcpy(copy, msg, len);
    copy[len] = 0;
    *result = (ab_value){.type = AB_STR, .buf = {copy, len}};
}

__attribute__((format(printf, 2, 3))) static int fail(ab_value *result, const char *fmt, ...) {
    char msg[320];
    va_list ap;
    va_start(ap, fmt);
    int n = vsnprintf(msg, sizeof msg, fmt, ap);
    va_end(ap);
    size_t len = n < 0 ? 0 : (size_t)n >= sizeof msg ? sizeof msg - 1 : (size_t)n;
    set_error_text(result, msg, ab__utf8_valid_prefix((const uint8_t *)msg, len));
    return -1;
}

static bool put_value(ab__writer *w, const ab_value *v) {
    switch (v->type) {
    case AB_VOID:
        ab__put_u8(w, AB_TAG_NONE);
        return true;
    case AB_BOOL:
        ab__put_u8(w, AB_TAG_BOOL);
        ab__put_u8(w, v->b ? 1 : 0);
        return true;
    case AB_INT:
        ab__put_u8(w, AB_TAG_INT);
        ab__put_u64(w, (uint64_t)v->i);
        return true;
    case AB_FLOAT: {
        uint64_t bits;
        memcpy(&bits, &v->f, 8);
        ab__put_u8(w, AB_TAG_FLOAT);
        ab__put_u64(w, bits);
        return true;
    }
    case AB_STR:
    case AB_BYTES:
        if (v->buf.len && !v->buf.ptr)
            return false;
        ab__put_u8(w, (uint8_t)v->type);
        ab__put_lstr(w, v->buf.ptr, v->buf.len);
        return true;
    }
    return false;
}

/* Decodes one value of the reply into *out, copying str/bytes to the heap. */
static int get_value(ab__reader *r, ab_value *out, const char *name) {
    uint8_t tag = ab__get_u8(r);
    switch (tag) {
    case AB_TAG_NONE:
        *out = ab_none();
        break;
    case AB_TAG_BOOL: {
        uint8_t b = ab__get_u8(r);
        if (b > 1)
            r->bad = true;
        *out = ab_bool(b);
        break;
    }
    case AB_TAG_INT:
        *out = ab_int((int64_t)ab__get_u64(r));
        break;
    case AB_TAG_FLOAT: {
        uint64_t bits = ab__get_u64(r);
        double f;
        memcpy(&f, &bits, 8);
        *out = ab_float(f);
        break;
    }
    case AB_TAG_STR:
    case AB_TAG_BYTES: {
        const uint8_t *p;
        uint32_t n;
        if (!ab__get_lstr(r, &p, &n))
            break;
        char *copy = malloc((size_t)n + 1);
        if (!copy)
            return fail(out, "out of memory copying the %s result of host function %s (%u bytes)",
                        ab__type_name(tag), name, n);
        memcpy(copy, p, n);
        copy[n] = 0;
        *out = (ab_value){.type = (ab_type)tag, .buf = {copy, n}};
        break;
    }
    default:
        r->bad = true;
    }
    if (r->bad)
        return fail(out, "malformed reply from host function %s", name);
    return 0;
}

static int call_host(const char *name, const ab_value *args, size_t nargs, ab_value *result);

int ab_call_host(const char *name, const ab_value *args, size_t nargs, ab_value *result) {
    if (result)
        return call_host(name, args, nargs, result);
    /* Nobody wants the result: decode it anyway (the status depends on it),
     * then free what was copied to the heap. */
    ab_value ignored;
    int r = call_host(name, args, nargs, &ignored);
    ab_value_free(&ignored);
    return r;
}

static int call_host(const char *name, const ab_value *args, size_t nargs, ab_value *result) {
    if (!name)
        return fail(result, "ab_call_host: name is NULL");
    size_t nlen = strnlen(name, AB_MAX_NAME + 1);
    if (nlen == 0 || nlen > AB_MAX_NAME)
        return fail(result, "ab_call_host: a host function name must be 1 to %d bytes",
                    AB_MAX_NAME);
    if (ab__utf8_valid_prefix((const uint8_t *)name, nlen) != nlen)
        return fail(result, "ab_call_host: a host function name must be valid UTF-8");
    if (!ab__in_call)
        return fail(result, "host function %s called outside a guest call", name);
    if (nargs > AB_MAX_PARAMS)
        return fail(result, "host function %s: too many arguments (%zu, at most %d)", name,
                    nargs, AB_MAX_PARAMS);
    if (nargs && !args)
        return fail(result, "host function %s: args is NULL", name);

    ab__writer w = {ab__out, ab__out_size, 0, false};
    ab__put_lstr(&w, name, nlen);
    ab__put_u8(&w, (uint8_t)nargs);
    for (size_t i = 0; i < nargs; i++) {
        if (!put_value(&w, &args[i]))
            return fail(result, "host function %s: argument %zu is not a valid ab_value", name,
                        i + 1);
        /* the host would take a str that is not UTF-8 for a protocol violation */
        if (args[i].type == AB_STR &&
            ab__utf8_valid_prefix(args[i].buf.ptr, args[i].buf.len) != args[i].buf.len)
            return fail(result, "host function %s: argument %zu is a str that is not valid UTF-8",
                        name, i + 1);
    }
    if (w.full)
        return fail(result,
                    "host function %s: the arguments do not fit in the output buffer "
                    "(%zu bytes)",
                    name, ab__out_size);

    AB__OUT(AB_PORT_HOSTCALL, w.len);

    /* The host's reply is in the output buffer. */
    ab__reader r = {ab__out, ab__out_size, 0, false};
    uint8_t status = ab__get_u8(&r);
    if (status == AB_REPLY_OK)
        return get_value(&r, result, name);
    if (status == AB_REPLY_ERROR) {
        const uint8_t *msg;
        uint32_t len;
        if (!ab__get_lstr(&r, &msg, &len))
            return fail(result, "malformed error reply from host function %s", name);
        set_error_text(result, (const char *)msg, len);
        return -1;
    }
    return fail(result, "malformed reply from host function %s (status %u)", name, status);
}

void ab_value_free(ab_value *v) {
    if (!v)
        return;
    if ((v->type == AB_STR || v->type == AB_BYTES) && v->buf.ptr != oom_message)
        free((void *)v->buf.ptr);
    *v = ab_none();
}

int64_t ab_call_host_int(const char *name, int64_t arg, int *err) {
    ab_value a = ab_int(arg), res;
    int64_t out = 0;
    int failed = 1;
    if (ab_call_host(name, &a, 1, &res) == 0) {
        if (res.type == AB_INT) {
            out = res.i;
            failed = 0;
        } else if (res.type == AB_BOOL) {
            out = res.b;
            failed = 0;
        }
    }
    ab_value_free(&res);
    if (err)
        *err = failed;
    return out;
}
