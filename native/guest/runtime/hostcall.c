/*
 * Calls from the guest to host functions: encode the request in the output
 * buffer, exit through AB_PORT_HOSTCALL, decode the reply the host left in the
 * output buffer and copy it to the heap (values.c does the values).
 */
#include "internal.h"

/* Error message used when the heap cannot hold the real one (not owned:
 * ab_value_free() leaves it alone). */
static const char oom_message[] = "out of memory in the guest while handling a host call";

static void set_error_text(ab_value *result, const char *msg, size_t len) {
    char *copy = malloc(len + 1);
    if (!copy) {
        *result = (ab_value){.type = AB_STR, .buf = {oom_message, sizeof oom_message - 1}};
        return;
    }
    memcpy(copy, msg, len);
    copy[len] = 0;
    *result = (ab_value){.type = AB_STR, .owned = true, .buf = {copy, len}};
}

__attribute__((format(printf, 2, 3))) static int fail(ab_value *result, const char *fmt, ...) {
    char msg[512];
    va_list ap;
    va_start(ap, fmt);
    int n = vsnprintf(msg, sizeof msg, fmt, ap);
    va_end(ap);
    size_t len = n < 0 ? 0 : (size_t)n >= sizeof msg ? sizeof msg - 1 : (size_t)n;
    set_error_text(result, msg, ab__utf8_valid_prefix((const uint8_t *)msg, len));
    return -1;
}

/* Decodes the value of the reply into *out: checked, then built in one heap
 * block that holds its arrays, strings and keys. The block is the storage of
 * the outermost value (its data, items or entries come first), which alone
 * is marked owned: ab_value_free() frees all of it. */
static int get_value(ab__reader *r, ab_value *out, const char *name) {
    size_t start = r->pos;
    ab__value_size size = {0, 0, 0};
    if (!ab__value_measure(r, &size))
        return fail(out, "malformed reply from host function %s", name);
    size_t n = ab__value_block_size(&size, true);
    uint8_t *block = NULL;
    if (n) {
        block = malloc(n);
        if (!block)
            return fail(out, "out of memory for the result of host function %s (%zu bytes)", name,
                        n);
    }
    size_t nodes = size.values * sizeof(ab_value) + size.entries * sizeof(ab_entry);
    ab__value_mem m = {block, (char *)block + nodes, true};
    r->pos = start;
    ab__value_build(r, out, &m);
    out->owned = block != NULL;
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
        ab__value_error err;
        if (!ab__put_value(&w, &args[i], &err))
            return fail(result, "host function %s: argument %zu%s: %s", name, i + 1, err.path,
                        err.problem);
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
