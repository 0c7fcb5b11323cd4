/*
 * aionub guest runtime: start-up, the function table and the dispatch loop.
 *
 *   _start (start.S) -> ab__main: check the boot info, set up the memory
 *   that brk and mmap hand out, start musl (TLS, the stack-protector canary,
 *   constructors: process.c), build the function table from the
 *   .ab_exports section, write it to the output buffer, out READY; then
 *   forever: decode the request in the input buffer (a call, or a run of
 *   main()), serve it, write the result record, out RESULT. Each resume by
 *   the host starts the next request.
 */
#include "internal.h"

uint8_t *ab__in;
size_t ab__in_size;
uint8_t *ab__out;
size_t ab__out_size;
bool ab__in_call;
uint32_t ab__boot_flags;

/* Provided by guest.ld. */
extern const struct ab_export __ab_exports_start[], __ab_exports_end[];

/* Exported functions sorted by (name length, name bytes) for binary search. */
typedef struct {
    const struct ab_export *e;
    uint32_t name_len;
    uint8_t int_slots, float_slots;
} fn_entry;

static fn_entry *fns;
static size_t nfns;

const char *ab__type_name(unsigned tag) {
    static const char *const names[] = {"None", "bool", "int",  "float", "str",
                                        "bytes", "list", "dict", "any"};
    return tag <= AB_TAG_ANY ? names[tag] : "<invalid type>";
}

/* ---- the function table ----------------------------------------------------- */

static int name_cmp(const uint8_t *a, size_t alen, const uint8_t *b, size_t blen) {
    if (alen != blen)
        return alen < blen ? -1 : 1;
    return memcmp(a, b, alen);
}

static void check_export(const struct ab_export *e, fn_entry *out) {
    size_t index = (size_t)(e - __ab_exports_start);
    if (!e->name)
        ab_abort(-1, "export #%zu has no name", index);
    size_t len = strnlen(e->name, AB_MAX_NAME + 1);
    if (len == 0 || len > AB_MAX_NAME)
        ab_abort(-1, "export #%zu: the name must be 1 to %d bytes", index, AB_MAX_NAME);
    if (ab__utf8_valid_prefix((const uint8_t *)e->name, len) != len)
        ab_abort(-1, "export #%zu: the name is not valid UTF-8", index);
    if (!e->fn)
        ab_abort(-1, "export %s has no function", e->name);
    if (e->ret > AB_TAG_BYTES && e->ret != AB_TAG_ANY)
        ab_abort(-1, "export %s: invalid return type %u", e->name, e->ret);
    if (e->nparams > AB_MAX_PARAMS)
        ab_abort(-1, "export %s: %u parameters (at most %d)", e->name, e->nparams, AB_MAX_PARAMS);
    unsigned ints = 0, floats = 0;
    for (unsigned i = 0; i < e->nparams; i++) {
        switch (e->params[i]) {
        case AB_TAG_BOOL:
        case AB_TAG_INT:
        case AB_TAG_STR:
        case AB_TAG_ANY:
            ints++;
            break;
        case AB_TAG_BYTES:
            ints += 2;
            break;
        case AB_TAG_FLOAT:
            floats++;
            break;
        default:
            ab_abort(-1, "export %s: invalid type %u for parameter %u", e->name, e->params[i],
                     i + 1);
        }
    }
    if (ints > 6 || floats > 8)
        ab_abort(-1,
                 "export %s: too many parameters for registers (%u integer-class, at most 6; "
                 "%u float, at most 8)",
                 e->name, ints, floats);
    *out = (fn_entry){e, (uint32_t)len, (uint8_t)ints, (uint8_t)floats};
}

static void build_function_table(void) {
    nfns = (size_t)(__ab_exports_end - __ab_exports_start);
    if (nfns == 0)
        return;
    fns = malloc(nfns * sizeof *fns);
    if (!fns)
        ab_abort(-1, "heap too small for the function table (%zu functions)", nfns);
    /* insertion sort: the table is small and built once */
    for (size_t i = 0; i < nfns; i++) {
        fn_entry cur;
        check_export(&__ab_exports_start[i], &cur);
        size_t j = i;
        while (j > 0 && name_cmp((const uint8_t *)cur.e->name, cur.name_len,
                                 (const uint8_t *)fns[j - 1].e->name, fns[j - 1].name_len) < 0) {
            fns[j] = fns[j - 1];
            j--;
        }
        fns[j] = cur;
    }
    for (size_t i = 1; i < nfns; i++)
        if (fns[i].name_len == fns[i - 1].name_len &&
            memcmp(fns[i].e->name, fns[i - 1].e->name, fns[i].name_len) == 0)
            ab_abort(-1, "function %s is exported twice", fns[i].e->name);
}

static const fn_entry *lookup(const uint8_t *name, size_t len) {
    size_t lo = 0, hi = nfns;
    while (lo < hi) {
        size_t mid = lo + (hi - lo) / 2;
        int c = name_cmp(name, len, (const uint8_t *)fns[mid].e->name, fns[mid].name_len);
        if (c == 0)
            return &fns[mid];
        if (c < 0)
            hi = mid;
        else
            lo = mid + 1;
    }
    return NULL;
}

/* ready := count:u32, count x (name:string, ret:u8, nparams:u8, tags), flags:u32 */
static size_t write_ready_record(void) {
    ab__writer w = {ab__out, ab__out_size, 0, false};
    ab__put_u32(&w, (uint32_t)nfns);
    for (size_t i = 0; i < nfns; i++) {
        const struct ab_export *e = fns[i].e;
        ab__put_lstr(&w, e->name, fns[i].name_len);
        ab__put_u8(&w, e->ret);
        ab__put_u8(&w, e->nparams);
        ab__put(&w, e->params, e->nparams);
    }
    ab__put_u32(&w, ab__has_main() ? AB_READY_HAS_MAIN : 0);
    if (w.full)
        ab_abort(-1, "the function table (%zu functions) does not fit in the output buffer "
                     "(%zu bytes)", nfns, ab__out_size);
    return w.len;
}

/* ---- dispatch ----------------------------------------------------------------- */

/* Every exported function is called as if it took six integer-class and eight
 * double arguments: under the SysV x86-64 ABI the integer ones travel in
 * rdi, rsi, rdx, rcx, r8, r9 and the doubles in xmm0-7, so a function with
 * fewer parameters simply ignores the extra registers. The cast is chosen by
 * the return type: rax (int, bool in al, pointer), xmm0 (double) or rax:rdx
 * (ab_bytes, two INTEGER eightbytes). */
#define AB__PARAMS int64_t, int64_t, int64_t, int64_t, int64_t, int64_t, \
                   double, double, double, double, double, double, double, double
typedef void (*fn_void)(AB__PARAMS);
typedef bool (*fn_bool)(AB__PARAMS);
typedef int64_t (*fn_int)(AB__PARAMS);
typedef double (*fn_float)(AB__PARAMS);
typedef const char *(*fn_str)(AB__PARAMS);
typedef ab_bytes (*fn_bytes)(AB__PARAMS);
/* ab_value (24 bytes) is returned in memory: the caller passes its address
 * in rdi and the arguments shift by one register on both sides alike, so
 * the sixth integer argument travels on the stack where the callee, which
 * has the same hidden parameter, looks for it. */
typedef ab_value (*fn_any)(AB__PARAMS);
#define AB__ARGS(i, f) i[0], i[1], i[2], i[3], i[4], i[5], \
                       f[0], f[1], f[2], f[3], f[4], f[5], f[6], f[7]

__attribute__((format(printf, 2, 3))) static size_t error_result(uint8_t status,
                                                                  const char *fmt, ...) {
    if (ab__out_size < 1)
        return 0;
    ab__out[0] = status;
    va_list ap;
    va_start(ap, fmt);
    size_t n = ab__put_message(1, fmt, ap);
    va_end(ap);
    return n;
}

static size_t not_found(const uint8_t *name, uint32_t len) {
    ab__writer w = {ab__out, ab__out_size, 0, false};
    ab__put_u8(&w, AB_STATUS_NOT_FOUND);
    /* The host sent the name; cut it (on a character boundary) if it cannot
     * fit, which only happens with an absurdly small output buffer. */
    size_t room = ab__out_size > 6 ? ab__out_size - 6 : 0;
    size_t n = len <= room ? len : ab__utf8_valid_prefix(name, room);
    ab__put_lstr(&w, name, n);
    return w.full ? 0 : w.len;
}

_Noreturn static void result_too_large(const struct ab_export *e, size_t len) {
    ab_abort(-1, "%s() result (%s of %zu bytes) does not fit in the output buffer (%zu bytes)",
             e->name, ab__type_name(e->ret), len, ab__out_size);
}

static size_t call_export(const struct ab_export *e, int64_t *iv, double *fv);

/* dispatch() and call_export() are on the stack while the exported function
 * runs, and that function may move the FS base (AB_SYS_SET_FS, arch_prctl):
 * they must not check a stack-protector canary at fs:0x28 when it returns. */
__attribute__((no_stack_protector, noinline)) static size_t dispatch(void) {
    ab__reader r = {ab__in, ab__in_size, 0, false};
    unsigned kind = ab__get_u8(&r);
    if (kind == AB_REQ_RUN)
        return ab__run(&r);
    if (kind != AB_REQ_CALL)
        return error_result(AB_STATUS_BAD_ARGS, "malformed request: unknown kind %u", kind);
    const uint8_t *name;
    uint32_t name_len;
    if (!ab__get_lstr(&r, &name, &name_len))
        return error_result(AB_STATUS_BAD_ARGS, "malformed call request: bad function name");
    unsigned nargs = ab__get_u8(&r);
    if (r.bad)
        return error_result(AB_STATUS_BAD_ARGS, "malformed call request: truncated");
    const fn_entry *f = lookup(name, name_len);
    if (!f)
        return not_found(name, name_len);
    const struct ab_export *e = f->e;
    if (nargs != e->nparams)
        return error_result(AB_STATUS_BAD_ARGS, "%s() takes %u argument%s (%u given)", e->name,
                            e->nparams, e->nparams == 1 ? "" : "s", nargs);

    int64_t iv[6] = {0};
    double fv[8] = {0};
    unsigned ni = 0, nf = 0;
    /* AB_ANY arguments: where each starts and the register slot it takes;
     * they are built once all arguments are checked. */
    size_t any_pos[AB_MAX_PARAMS];
    unsigned any_slot[AB_MAX_PARAMS], nany = 0;
    ab__value_size any_size = {0, 0, 0};
    for (unsigned i = 0; i < nargs; i++) {
        size_t at = r.pos;
        unsigned tag = ab__get_u8(&r);
        unsigned want = e->params[i];
        if (r.bad || tag > AB_TAG_LAST)
            return error_result(AB_STATUS_BAD_ARGS,
                                "malformed call request: bad tag for argument %u", i + 1);
        if (want == AB_TAG_ANY) {
            r.pos = at;
            if (!ab__value_measure(&r, &any_size))
                return error_result(AB_STATUS_BAD_ARGS,
                                    "malformed call request: bad value for argument %u", i + 1);
            any_pos[nany] = at;
            any_slot[nany++] = ni++;
            continue;
        }
        if (tag != want && !(tag == AB_TAG_INT && want == AB_TAG_FLOAT))
            return error_result(AB_STATUS_BAD_ARGS, "%s() argument %u must be %s, not %s",
                                e->name, i + 1, ab__type_name(want), ab__type_name(tag));
        switch (tag) {
        case AB_TAG_BOOL: {
            uint8_t b = ab__get_u8(&r);
            if (b > 1)
                r.bad = true;
            iv[ni++] = b;
            break;
        }
        case AB_TAG_INT: {
            int64_t v = (int64_t)ab__get_u64(&r);
            if (want == AB_TAG_FLOAT)
                fv[nf++] = (double)v;
            else
                iv[ni++] = v;
            break;
        }
        case AB_TAG_FLOAT: {
            uint64_t bits = ab__get_u64(&r);
            memcpy(&fv[nf++], &bits, 8);
            break;
        }
        case AB_TAG_STR:
        case AB_TAG_BYTES: {
            const uint8_t *p;
            uint32_t n;
            if (!ab__get_lstr(&r, &p, &n))
                break;
            if (tag == AB_TAG_STR) {
                if (memchr(p, 0, n))
                    return error_result(AB_STATUS_BAD_ARGS,
                                        "%s() argument %u must not contain NUL characters",
                                        e->name, i + 1);
                iv[ni++] = (int64_t)(uintptr_t)p;
            } else {
                iv[ni++] = (int64_t)(uintptr_t)p;
                iv[ni++] = (int64_t)n;
            }
            break;
        }
        }
        if (r.bad)
            return error_result(AB_STATUS_BAD_ARGS,
                                "malformed call request: bad value for argument %u", i + 1);
    }

    /* One block holds the arrays of every AB_ANY argument; their strings
     * point into the input buffer. The block is freed after the result is
     * written, so a function may return its arguments. */
    ab_value any[AB_MAX_PARAMS];
    uint8_t *block = NULL;
    if (nany) {
        size_t size = ab__value_block_size(&any_size, false);
        if (size && !(block = malloc(size)))
            return error_result(AB_STATUS_BAD_ARGS,
                                "out of memory in the guest for the arguments of %s() (%zu bytes)",
                                e->name, size);
        ab__value_mem m = {block, NULL, false};
        for (unsigned k = 0; k < nany; k++) {
            ab__reader ar = {ab__in, ab__in_size, any_pos[k], false};
            ab__value_build(&ar, &any[k], &m);
            iv[any_slot[k]] = (int64_t)(uintptr_t)&any[k];
        }
    }

    ab__current_call = e->name;
    size_t n = call_export(e, iv, fv);
    ab__current_call = "";
    free(block);
    return n;
}

/* Calls an export and writes its result record. The status goes in only
 * after the call returns and stdio is flushed: the function may log, call
 * the host or leave output in stdio's buffers, and all of that uses the
 * output buffer. */
/* Encodes an AB_ANY result, then frees what it owns (see aionub_guest.h). */
__attribute__((noinline)) static void put_any_result(ab__writer *w, const struct ab_export *e,
                                                     ab_value *v) {
    ab__value_error err;
    ab__put_u8(w, AB_STATUS_OK);
    if (!ab__put_value(w, v, &err))
        ab_abort(-1, "%s() returned an invalid value: result%s: %s", e->name, err.path,
                 err.problem);
    if (w->full)
        ab_abort(-1, "%s() result (a %s) does not fit in the output buffer (%zu bytes)", e->name,
                 ab__type_name(v->type), ab__out_size);
    ab_value_free(v);
}

__attribute__((no_stack_protector, noinline)) static size_t call_export(const struct ab_export *e,
                                                                        int64_t *iv, double *fv) {
    ab__writer w = {ab__out, ab__out_size, 0, false};
    switch (e->ret) {
    case AB_TAG_NONE:
        ((fn_void)e->fn)(AB__ARGS(iv, fv));
        ab__flush_stdio();
        ab__put_u8(&w, AB_STATUS_OK);
        ab__put_u8(&w, AB_TAG_NONE);
        break;
    case AB_TAG_BOOL: {
        bool b = ((fn_bool)e->fn)(AB__ARGS(iv, fv));
        ab__flush_stdio();
        ab__put_u8(&w, AB_STATUS_OK);
        ab__put_u8(&w, AB_TAG_BOOL);
        ab__put_u8(&w, b ? 1 : 0);
        break;
    }
    case AB_TAG_INT: {
        int64_t v = ((fn_int)e->fn)(AB__ARGS(iv, fv));
        ab__flush_stdio();
        ab__put_u8(&w, AB_STATUS_OK);
        ab__put_u8(&w, AB_TAG_INT);
        ab__put_u64(&w, (uint64_t)v);
        break;
    }
    case AB_TAG_FLOAT: {
        double v = ((fn_float)e->fn)(AB__ARGS(iv, fv));
        ab__flush_stdio();
        uint64_t bits;
        memcpy(&bits, &v, 8);
        ab__put_u8(&w, AB_STATUS_OK);
        ab__put_u8(&w, AB_TAG_FLOAT);
        ab__put_u64(&w, bits);
        break;
    }
    case AB_TAG_STR: {
        const char *s = ((fn_str)e->fn)(AB__ARGS(iv, fv));
        ab__flush_stdio();
        if (!s)
            ab_abort(-1, "%s() returned NULL instead of a str", e->name);
        size_t len = strlen(s);
        if (ab__utf8_valid_prefix((const uint8_t *)s, len) != len)
            ab_abort(-1, "%s() returned a str that is not valid UTF-8 (at byte %zu)", e->name,
                     ab__utf8_valid_prefix((const uint8_t *)s, len));
        ab__put_u8(&w, AB_STATUS_OK);
        ab__put_u8(&w, AB_TAG_STR);
        ab__put_lstr(&w, s, len);
        if (w.full)
            result_too_large(e, len);
        break;
    }
    case AB_TAG_ANY: {
        ab_value v = ((fn_any)e->fn)(AB__ARGS(iv, fv));
        ab__flush_stdio();
        put_any_result(&w, e, &v);
        break;
    }
    case AB_TAG_BYTES: {
        ab_bytes b = ((fn_bytes)e->fn)(AB__ARGS(iv, fv));
        ab__flush_stdio();
        if (!b.data && b.len)
            ab_abort(-1, "%s() returned bytes with a NULL pointer and length %zu", e->name,
                     b.len);
        ab__put_u8(&w, AB_STATUS_OK);
        ab__put_u8(&w, AB_TAG_BYTES);
        ab__put_lstr(&w, b.data, b.len);
        if (w.full)
            result_too_large(e, b.len);
        break;
    }
    }
    if (w.full) /* only with an output buffer smaller than a scalar result */
        result_too_large(e, 8);
    return w.len;
}

/* ---- entry ---------------------------------------------------------------------- */

_Noreturn void ab__main(const struct ab_boot_info *bi);

/* Runs before musl has set up the thread pointer: no stack protector. */
__attribute__((no_stack_protector)) _Noreturn void ab__main(const struct ab_boot_info *bi) {
    if (!bi || bi->magic != AB_BOOT_MAGIC) {
        /* Without valid boot info there is no output buffer to explain in:
         * an empty abort record is all the host gets. */
        for (;;)
            AB__OUT(AB_PORT_ABORT, 0);
    }
    ab__in = (uint8_t *)(uintptr_t)bi->input_addr;
    ab__in_size = bi->input_size;
    ab__out = (uint8_t *)(uintptr_t)bi->output_addr;
    ab__out_size = bi->output_size;
    if (bi->abi_version != AB_ABI_VERSION)
        ab_abort(-1, "guest built for aionub ABI version %u, host speaks version %u",
                 AB_ABI_VERSION, bi->abi_version);
    if (ab__in_size > UINT32_MAX)
        ab__in_size = UINT32_MAX;
    if (ab__out_size > UINT32_MAX) /* eax carries the record size */
        ab__out_size = UINT32_MAX;
    ab__boot_flags = bi->flags;
    ab__pages_init(bi->heap_addr, bi->heap_size);
    ab__process_init(bi);

    build_function_table();
    AB__OUT(AB_PORT_READY, write_ready_record());
    for (;;) {
        ab__in_call = true;
        size_t n = dispatch();
        ab__in_call = false;
        AB__OUT(AB_PORT_RESULT, n);
    }
}
