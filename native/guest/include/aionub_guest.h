/*
 * aionub guest SDK: the one header a guest author includes.
 *
 * A guest is a set of plain C functions registered with AB_EXPORT. The runtime
 * (native/guest/runtime/) owns the entry point, the heap and the dispatch loop:
 * there is no main(). Build guests with aionub.build_guest(), which supplies
 * the compiler flags and the linker script.
 *
 *     #include <aionub_guest.h>
 *
 *     static int64_t add(int64_t a, int64_t b) { return a + b; }
 *     AB_EXPORT(add, AB_INT, AB_INT, AB_INT);     // name, return type, params
 *
 * This header also brings in <stdint.h>, <stddef.h>, <stdbool.h>, <stdarg.h>
 * and the SDK's <string.h>, <stdlib.h> and <stdio.h>; <ctype.h> and
 * <assert.h> are available too. Nothing else from a hosted C library exists.
 */
#ifndef AIONUB_GUEST_H
#define AIONUB_GUEST_H

#include <stdarg.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "aionub/abi.h"

#ifdef __cplusplus
#error "aionub guests are C (gnu11); C++ is not supported"
#endif

/* ---- types --------------------------------------------------------------- */

/* Value types. The numbers are the wire tags (AB_TAG_*). */
typedef enum {
    AB_VOID = AB_TAG_NONE, /* return type only: the function returns nothing  */
    AB_BOOL = AB_TAG_BOOL,
    AB_INT = AB_TAG_INT,
    AB_FLOAT = AB_TAG_FLOAT,
    AB_STR = AB_TAG_STR,
    AB_BYTES = AB_TAG_BYTES,
    AB_LIST = AB_TAG_LIST, /* in ab_value only (not in signatures: use AB_ANY) */
    AB_DICT = AB_TAG_DICT, /* in ab_value only (not in signatures: use AB_ANY) */
    AB_ANY = AB_TAG_ANY,   /* in signatures only: a value of any type, passed
                              as const ab_value * and returned as ab_value     */
} ab_type;

/* What a function exported with return type AB_BYTES returns. `data` must
 * stay valid until the function returns (the runtime copies it right after);
 * `data` may be NULL only when `len` is 0. */
typedef struct {
    const uint8_t *data;
    size_t len;
} ab_bytes;

/*
 * A dynamically typed value: the arguments and results of AB_ANY
 * parameters and returns, and of host calls (ab_call_host).
 *
 *   AB_VOID (None), AB_BOOL .b, AB_INT .i, AB_FLOAT .f,
 *   AB_STR, AB_BYTES  .buf.ptr / .buf.len (len does not count a NUL; a str
 *                     is UTF-8 and may contain NUL characters),
 *   AB_LIST           .list.items / .list.len,
 *   AB_DICT           .dict.entries / .dict.len (keys are unique).
 *
 * Lists and dicts nest at most AB_MAX_DEPTH (64) deep.
 *
 * Ownership: `owned` says that the value's own storage (a str's or bytes'
 * data, a list's items array, a dict's entries array) was allocated with
 * malloc() and belongs to the value; an entry's `key_owned` says the same of
 * its key. ab_value_free() frees what is marked owned, after descending into
 * lists and dicts (whatever their mark), and nothing else. Values built with
 * the constructors below are not owned; ab_owned() marks one.
 */
typedef struct ab_value ab_value;
typedef struct ab_entry ab_entry;
struct ab_value {
    ab_type type;
    bool owned;
    union {
        bool b;
        int64_t i;
        double f;
        struct {
            const void *ptr;
            size_t len;
        } buf;
        struct {
            const ab_value *items;
            size_t len;
        } list;
        struct {
            const ab_entry *entries;
            size_t len;
        } dict;
    };
};
/* One entry of a dict: a UTF-8 key (NUL-terminated when the runtime made
 * it; key_len does not count the NUL) and its value. */
struct ab_entry {
    const char *key;
    size_t key_len;
    bool key_owned;
    ab_value value;
};

/* ---- exporting functions -------------------------------------------------- */
/*
 * AB_EXPORT(fn, RET, PARAM...) exports the function `fn` under its own name;
 * AB_EXPORT_AS("name", fn, RET, PARAM...) under another one (useful when the
 * name clashes with C, e.g. "log" or "abort"). Write it at file scope, after
 * the function. RET and each PARAM must be written literally as one of the
 * AB_* names above. The C signature must match exactly; a mismatch is a
 * compile-time error:
 *
 *   parameter  AB_BOOL -> bool          return  AB_VOID  -> void
 *              AB_INT  -> int64_t               AB_BOOL  -> bool
 *              AB_FLOAT-> double                AB_INT   -> int64_t
 *              AB_STR  -> const char *          AB_FLOAT -> double
 *              AB_BYTES-> const uint8_t *, size_t   AB_STR -> const char *
 *                         (two C parameters)    AB_BYTES -> ab_bytes
 *              AB_ANY  -> const ab_value *      AB_ANY   -> ab_value
 *
 * A str argument is NUL-terminated UTF-8 without embedded NULs (the runtime
 * rejects a call otherwise). A bytes argument is followed by a NUL byte that
 * is not counted in its length. Arguments live in the input buffer and are
 * valid only during the call; copy what you keep.
 *
 * A str result must be NUL-terminated UTF-8 and a bytes result must stay
 * valid until the function returns: the runtime copies it into the output
 * buffer after the return (so returning a pointer to a static buffer, or to
 * an argument, is fine). A NULL str result, a result that does not fit in the
 * output buffer and a str result that is not valid UTF-8 abort the guest with
 * code -1 and a message that says which.
 *
 * Limits (checked at compile time): at most 6 integer-class C parameters
 * (bool, int, str count 1; bytes counts 2) and 8 float parameters, so that
 * every argument travels in a register; at most 16 parameters; names of 1 to
 * 255 bytes, unique within a guest (checked when the guest starts).
 *
 * An int argument is accepted for a float parameter (converted as by a C
 * cast); no other conversion is made.
 *
 * An AB_ANY argument is any value, lists and dicts included. It, and all it
 * points to (strings point into the input buffer, arrays into memory the
 * runtime frees), stays valid until the call's result has been written:
 * returning it or parts of it is fine; copy what you keep; never free it.
 *
 * An AB_ANY result is encoded by the runtime after the function returns;
 * then the runtime calls ab_value_free() on it, which frees exactly the parts
 * marked owned (ab_owned(), key_owned). Unowned parts must stay valid until
 * the return (static data, the arguments, or memory you manage). A result
 * that is not a valid value (an unknown type, a NULL pointer with a non-zero
 * length, a str or key that is not UTF-8, a dict with a key twice, nesting
 * deeper than AB_MAX_DEPTH) or does not fit the output buffer aborts the
 * guest with code -1 and a message giving the path to the bad part.
 */
struct ab_export {
    const char *name;
    void (*fn)(void);
    uint8_t ret;     /* ab_type */
    uint8_t nparams; /* logical parameters: bytes counts 1 */
    uint8_t params[AB_MAX_PARAMS];
};

#define AB_EXPORT(fn, ...) AB_EXPORT_AS(#fn, fn, __VA_ARGS__)

#define AB_EXPORT_AS(name, fn, ...)                                              \
    _Static_assert(sizeof(name) > 1 && sizeof(name) - 1 <= AB_MAX_NAME,          \
                   "AB_EXPORT: the name must be a string literal of 1 to 255 "   \
                   "bytes");                                                     \
    _Static_assert(AB__NARGS(__VA_ARGS__) - 1 <= AB_MAX_PARAMS,                  \
                   "AB_EXPORT: at most 16 parameters");                          \
    _Static_assert(AB__INT_SLOTS(__VA_ARGS__) <= 6,                              \
                   "AB_EXPORT: at most 6 integer-class C parameters (bool, "     \
                   "int, str and any take 1, bytes takes 2)");                   \
    _Static_assert(AB__FLOAT_SLOTS(__VA_ARGS__) <= 8,                            \
                   "AB_EXPORT: at most 8 float parameters");                     \
    _Static_assert(__builtin_types_compatible_p(__typeof__(&(fn)),               \
                                                AB__FNTYPE(__VA_ARGS__)),        \
                   "AB_EXPORT: the C signature of " #fn " does not match the "   \
                   "declared types (see aionub_guest.h for the mapping)");       \
    static const struct ab_export AB__CAT(ab__export_, __COUNTER__)              \
        __attribute__((used, section(".ab_exports"), aligned(8))) = {            \
            (name), (void (*)(void))(fn), AB__FIRST(__VA_ARGS__),                \
            (uint8_t)(AB__NARGS(__VA_ARGS__) - 1),                               \
            {AB__PARAM_INIT(__VA_ARGS__)}}

/* ---- values ------------------------------------------------------------------ */

static inline ab_value ab_none(void) { return (ab_value){.type = AB_VOID}; }
static inline ab_value ab_bool(bool b) { return (ab_value){.type = AB_BOOL, .b = b}; }
static inline ab_value ab_int(int64_t i) { return (ab_value){.type = AB_INT, .i = i}; }
static inline ab_value ab_float(double f) { return (ab_value){.type = AB_FLOAT, .f = f}; }
/* `s` must be NUL-terminated UTF-8; it is not copied. */
static inline ab_value ab_str(const char *s) {
    return (ab_value){.type = AB_STR, .buf = {s, strlen(s)}};
}
/* `len` bytes of UTF-8 at `s` (no NUL needed); not copied. */
static inline ab_value ab_strn(const char *s, size_t len) {
    return (ab_value){.type = AB_STR, .buf = {s, len}};
}
static inline ab_value ab_bytes_value(const void *ptr, size_t len) {
    return (ab_value){.type = AB_BYTES, .buf = {ptr, len}};
}
/* A list of the `n` values at `items` (not copied). */
static inline ab_value ab_list(const ab_value *items, size_t n) {
    return (ab_value){.type = AB_LIST, .list = {items, n}};
}
/* A dict of the `n` entries at `entries` (not copied; keys must be unique). */
static inline ab_value ab_dict(const ab_entry *entries, size_t n) {
    return (ab_value){.type = AB_DICT, .dict = {entries, n}};
}
/* A dict entry: `key` is NUL-terminated UTF-8, not copied. */
static inline ab_entry ab_key(const char *key, ab_value value) {
    return (ab_entry){.key = key, .key_len = strlen(key), .value = value};
}
/* `v`, marked as owning its storage (from malloc): ab_value_free() frees it.
 *     ab_value *items = malloc(n * sizeof *items);  ...
 *     return ab_owned(ab_list(items, n));      // the runtime frees items   */
static inline ab_value ab_owned(ab_value v) {
    v.owned = true;
    return v;
}

/* Frees the storage of `v` marked owned, and of the values inside it (at
 * most AB_MAX_DEPTH levels down), then sets *v to None. Unowned parts are
 * left alone. NULL is allowed. */
void ab_value_free(ab_value *v);

/* The value of `key` in the dict `dict`, or NULL (not a dict, or no such key). */
const ab_value *ab_dict_get(const ab_value *dict, const char *key);

/* ---- calling the host ------------------------------------------------------ */

/*
 * Call the host function `name` with `nargs` arguments (at most 16; any
 * values, lists and dicts included) and wait for its reply. Only valid
 * while the guest is serving a call.
 *
 * Returns 0 and stores the host's return value in *result on success. On an
 * error (the host function raised, is unknown, or returned a value that
 * cannot be sent; an argument is not a valid value, or the request could not
 * be sent) returns -1 and stores an AB_STR error message in *result. An
 * error on the host's side (the first three) also makes the call raise
 * HostFunctionError on the host once it returns, whatever the guest does. Results (error messages included) are heap
 * copies, strings and keys NUL-terminated, that stay valid until
 * ab_value_free(result): call it for every result.
 */
int ab_call_host(const char *name, const ab_value *args, size_t nargs, ab_value *result);

/* Call `name(arg)` and return its int (a bool result counts as 0 or 1).
 * On an error, or if the host returned another type, returns 0 and sets
 * *err to 1 (when err is not NULL); otherwise sets *err to 0. */
int64_t ab_call_host_int(const char *name, int64_t arg, int *err);

/* ---- logging and aborting ---------------------------------------------------- */

#define AB_LOG_DEBUG 10
#define AB_LOG_INFO 20
#define AB_LOG_WARNING 30
#define AB_LOG_ERROR 40

/* Send a log record to the host (printf-style). Other levels are rounded
 * down to one of these four (anything below DEBUG becomes DEBUG). Messages
 * longer than the output buffer are truncated; invalid UTF-8 bytes are
 * replaced by '?'. */
void ab_log(int level, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
void ab_vlog(int level, const char *fmt, va_list ap) __attribute__((format(printf, 2, 0)));

/* Abort the guest: the host raises GuestAborted(code, message) and never
 * resumes this sandbox (until it is restored from a snapshot). */
_Noreturn void ab_abort(int64_t code, const char *fmt, ...)
    __attribute__((format(printf, 2, 3), cold));
_Noreturn void ab_vabort(int64_t code, const char *fmt, va_list ap)
    __attribute__((format(printf, 2, 0), cold));

/* ---- implementation details of AB_EXPORT ------------------------------------ */

#define AB__CAT(a, b) AB__CAT_(a, b)
#define AB__CAT_(a, b) a##b
#define AB__FIRST(x, ...) x
#define AB__COMMA() ,
#define AB__NOSEP()
#define AB__MAP(M, S, ...) AB__CAT(AB__MAP_, AB__NARGS(__VA_ARGS__))(M, S, __VA_ARGS__)

/* C parameter type(s) for each parameter tag. */
#define AB__CT(t) AB__CT_##t
#define AB__CT_AB_BOOL bool
#define AB__CT_AB_INT int64_t
#define AB__CT_AB_FLOAT double
#define AB__CT_AB_STR const char *
#define AB__CT_AB_BYTES const uint8_t *, size_t
#define AB__CT_AB_ANY const ab_value *
#define AB__CT_AB_VOID ab_error_AB_VOID_is_only_valid_as_a_return_type
#define AB__CT_AB_LIST ab_error_AB_LIST_is_not_a_signature_type_use_AB_ANY
#define AB__CT_AB_DICT ab_error_AB_DICT_is_not_a_signature_type_use_AB_ANY
/* C return type for each return tag. */
#define AB__RT(t) AB__RT_##t
#define AB__RT_AB_VOID void
#define AB__RT_AB_BOOL bool
#define AB__RT_AB_INT int64_t
#define AB__RT_AB_FLOAT double
#define AB__RT_AB_STR const char *
#define AB__RT_AB_BYTES ab_bytes
#define AB__RT_AB_ANY ab_value
#define AB__RT_AB_LIST ab_error_AB_LIST_is_not_a_signature_type_use_AB_ANY
#define AB__RT_AB_DICT ab_error_AB_DICT_is_not_a_signature_type_use_AB_ANY
/* Register slots taken by each parameter tag. */
#define AB__IS(t) +AB__IS_##t
#define AB__IS_AB_BOOL 1
#define AB__IS_AB_INT 1
#define AB__IS_AB_FLOAT 0
#define AB__IS_AB_STR 1
#define AB__IS_AB_BYTES 2
#define AB__IS_AB_VOID 0
#define AB__IS_AB_ANY 1
#define AB__IS_AB_LIST 0
#define AB__IS_AB_DICT 0
#define AB__FS(t) +AB__FS_##t
#define AB__FS_AB_BOOL 0
#define AB__FS_AB_INT 0
#define AB__FS_AB_FLOAT 1
#define AB__FS_AB_STR 0
#define AB__FS_AB_BYTES 0
#define AB__FS_AB_VOID 0
#define AB__FS_AB_ANY 0
#define AB__FS_AB_LIST 0
#define AB__FS_AB_DICT 0
#define AB__TAG(t) t

#define AB__INT_SLOTS(...) (0 AB__MAP(AB__IS, AB__NOSEP, __VA_ARGS__))
#define AB__FLOAT_SLOTS(...) (0 AB__MAP(AB__FS, AB__NOSEP, __VA_ARGS__))
/* Dispatch on whether any parameter follows the return type: _N or _P. */
#define AB__IFP(prefix, ...) AB__CAT(prefix, AB__HASP(__VA_ARGS__))
#define AB__PARAM_INIT(...) AB__IFP(AB__PI_, __VA_ARGS__)(__VA_ARGS__)
#define AB__PI_N(r) 0
#define AB__PI_P(r, ...) AB__MAP(AB__TAG, AB__COMMA, r, __VA_ARGS__)
/* The expected function pointer type: RET (*)(PARAMS) or RET (*)(void). */
#define AB__FNTYPE(...)                                                          \
    AB__CAT(AB__RT_, AB__FIRST(__VA_ARGS__))                                     \
    (*)(AB__IFP(AB__PL_, __VA_ARGS__)(__VA_ARGS__))
#define AB__PL_N(r) void
#define AB__PL_P(r, ...) AB__MAP(AB__CT, AB__COMMA, r, __VA_ARGS__)

/* Argument counting and a map over the parameter tags (skipping the first
 * argument, the return type), for up to 16 parameters. */
#define AB__NARGS(...) AB__NARGS_(__VA_ARGS__, 20, 19, 18, 17, 16, 15, 14, 13, 12, 11, 10, 9, 8, 7, 6, 5, 4, 3, 2, 1, 0)
#define AB__HASP(...) AB__NARGS_(__VA_ARGS__, P, P, P, P, P, P, P, P, P, P, P, P, P, P, P, P, P, P, P, N, 0)
#define AB__NARGS_(_1, _2, _3, _4, _5, _6, _7, _8, _9, _10, _11, _12, _13, _14, _15, _16, _17, _18, _19, _20, n, ...) n
#define AB__MAP_1(M, S, r)
#define AB__MAP_2(M, S, r, _1) M(_1)
#define AB__MAP_3(M, S, r, _1, _2) M(_1) S() M(_2)
#define AB__MAP_4(M, S, r, _1, _2, _3) M(_1) S() M(_2) S() M(_3)
#define AB__MAP_5(M, S, r, _1, _2, _3, _4) M(_1) S() M(_2) S() M(_3) S() M(_4)
#define AB__MAP_6(M, S, r, _1, _2, _3, _4, _5) M(_1) S() M(_2) S() M(_3) S() M(_4) S() M(_5)
#define AB__MAP_7(M, S, r, _1, _2, _3, _4, _5, _6) \
    M(_1) S() M(_2) S() M(_3) S() M(_4) S() M(_5) S() M(_6)
#define AB__MAP_8(M, S, r, _1, _2, _3, _4, _5, _6, _7) \
    M(_1) S() M(_2) S() M(_3) S() M(_4) S() M(_5) S() M(_6) S() M(_7)
#define AB__MAP_9(M, S, r, _1, _2, _3, _4, _5, _6, _7, _8) \
    M(_1) S() M(_2) S() M(_3) S() M(_4) S() M(_5) S() M(_6) S() M(_7) S() \
    M(_8)
#define AB__MAP_10(M, S, r, _1, _2, _3, _4, _5, _6, _7, _8, _9) \
    M(_1) S() M(_2) S() M(_3) S() M(_4) S() M(_5) S() M(_6) S() M(_7) S() \
    M(_8) S() M(_9)
#define AB__MAP_11(M, S, r, _1, _2, _3, _4, _5, _6, _7, _8, _9, _10) \
    M(_1) S() M(_2) S() M(_3) S() M(_4) S() M(_5) S() M(_6) S() M(_7) S() \
    M(_8) S() M(_9) S() M(_10)
#define AB__MAP_12(M, S, r, _1, _2, _3, _4, _5, _6, _7, _8, _9, _10, _11) \
    M(_1) S() M(_2) S() M(_3) S() M(_4) S() M(_5) S() M(_6) S() M(_7) S() \
    M(_8) S() M(_9) S() M(_10) S() M(_11)
#define AB__MAP_13(M, S, r, _1, _2, _3, _4, _5, _6, _7, _8, _9, _10, _11, _12) \
    M(_1) S() M(_2) S() M(_3) S() M(_4) S() M(_5) S() M(_6) S() M(_7) S() \
    M(_8) S() M(_9) S() M(_10) S() M(_11) S() M(_12)
#define AB__MAP_14(M, S, r, _1, _2, _3, _4, _5, _6, _7, _8, _9, _10, _11, _12, _13) \
    M(_1) S() M(_2) S() M(_3) S() M(_4) S() M(_5) S() M(_6) S() M(_7) S() \
    M(_8) S() M(_9) S() M(_10) S() M(_11) S() M(_12) S() M(_13)
#define AB__MAP_15(M, S, r, _1, _2, _3, _4, _5, _6, _7, _8, _9, _10, _11, _12, _13, _14) \
    M(_1) S() M(_2) S() M(_3) S() M(_4) S() M(_5) S() M(_6) S() M(_7) S() \
    M(_8) S() M(_9) S() M(_10) S() M(_11) S() M(_12) S() M(_13) S() M(_14)
#define AB__MAP_16(M, S, r, _1, _2, _3, _4, _5, _6, _7, _8, _9, _10, _11, _12, _13, _14, _15) \
    M(_1) S() M(_2) S() M(_3) S() M(_4) S() M(_5) S() M(_6) S() M(_7) S() \
    M(_8) S() M(_9) S() M(_10) S() M(_11) S() M(_12) S() M(_13) S() \
    M(_14) S() M(_15)
#define AB__MAP_17(M, S, r, _1, _2, _3, _4, _5, _6, _7, _8, _9, _10, _11, _12, _13, _14, _15, _16) \
    M(_1) S() M(_2) S() M(_3) S() M(_4) S() M(_5) S() M(_6) S() M(_7) S() \
    M(_8) S() M(_9) S() M(_10) S() M(_11) S() M(_12) S() M(_13) S() \
    M(_14) S() M(_15) S() M(_16)

#endif /* AIONUB_GUEST_H */
