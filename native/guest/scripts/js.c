/* The JavaScript runtime guest: QuickJS in one persistent context.
 *
 *   eval(code: str) -> any     evaluate a script, return its completion value
 *   exec(code: str) -> any     run a script, return None
 *   call(name: str, args: any) -> any
 *                              call the global function `name` with the list args
 *
 * Every result is an envelope (common.h): [true, value] or [false, message,
 * stack]. A Promise that eval's or exec's script, or call's function,
 * returns is awaited: pending jobs run until it settles; its rejection is
 * the error, and "the promise never settled" is one when no job is left
 * that could settle it. Then the pending jobs run to the end, and every
 * rejection still unhandled is logged as a WARNING. (QuickJS 2021-03-27
 * has no top-level await.) Conversions (docs/scripts.md):
 *
 *   JS -> Python: undefined/null -> None; booleans; a number that is an
 *   integer with |x| <= 2**53 -> int (not -0), any other number -> float;
 *   BigInt -> int (must fit 64 bits); string -> str (lone surrogates are an
 *   error); Uint8Array / ArrayBuffer -> bytes; Array -> list (holes -> None);
 *   other objects -> dict of their own enumerable string keys; functions,
 *   symbols, other typed arrays and cycles -> an error naming the path.
 *
 *   Python -> JS: None -> null; int -> number when |x| <= 2**53, else
 *   BigInt; float -> number; str -> string; bytes -> Uint8Array; list ->
 *   Array; dict -> plain object.
 *
 * print(...) and console.log/info/debug/warn/error(...) send log records.
 * host.name(...args) calls the host function `name`.
 * Built by setup.py with QuickJS's sources (aionub._sources "quickjs").
 */
#include "common.h"

#include <errno.h>
#include <math.h>

#include "quickjs.h"

static JSRuntime *rt;
static JSContext *ctx;
static JSValue u8_ctor, ab_ctor, typed_ctor; /* Uint8Array, ArrayBuffer, %TypedArray% */

#define TWO53 9007199254740992.0

/* ---- JS -> ab_value ------------------------------------------------------------- */

static void *seen[SCRIPT_MAX_DEPTH + 1];

static int to_ab(JSValueConst v, ab_value *out, int depth);

static int to_ab_string(JSValueConst v, ab_value *out) {
    size_t len;
    const char *s = JS_ToCStringLen(ctx, &len, v);
    if (s == NULL)
        return conv_fail("the string cannot be read (out of memory?)");
    if (!utf8_valid((const unsigned char *)s, len)) {
        JS_FreeCString(ctx, s);
        return conv_fail("a string with a lone surrogate cannot be converted");
    }
    *out = owned_buf(AB_STR, s, len);
    JS_FreeCString(ctx, s);
    return 0;
}

static int to_ab_object(JSValueConst v, ab_value *out, int depth) {
    if (JS_IsFunction(ctx, v))
        return conv_fail("a function cannot be converted");
    void *ptr = JS_VALUE_GET_PTR(v);
    for (int i = 0; i < depth; i++)
        if (seen[i] == ptr)
            return conv_fail("a cycle cannot be converted (the value contains itself)");
    if (depth >= SCRIPT_MAX_DEPTH)
        return conv_fail("arrays and objects nest deeper than %d levels", SCRIPT_MAX_DEPTH);
    seen[depth] = ptr;

    /* instanceof runs script code for a Proxy (its getPrototypeOf trap):
     * -1 is an exception, pending. */
    int is_u8 = JS_IsInstanceOf(ctx, v, u8_ctor), is_ab = is_u8 ? 0 : JS_IsInstanceOf(ctx, v, ab_ctor);
    int is_typed = is_u8 || is_ab ? 0 : JS_IsInstanceOf(ctx, v, typed_ctor);
    if (is_u8 < 0 || is_ab < 0 || is_typed < 0)
        return -2;
    if (is_u8) {
        size_t off, len, bpe;
        JSValue buf = JS_GetTypedArrayBuffer(ctx, v, &off, &len, &bpe);
        if (JS_IsException(buf))
            return conv_fail("a Uint8Array cannot be read");
        size_t size;
        uint8_t *data = JS_GetArrayBuffer(ctx, &size, buf);
        JS_FreeValue(ctx, buf);
        if (data == NULL && len != 0)
            return conv_fail("a detached Uint8Array cannot be converted");
        *out = owned_buf(AB_BYTES, data ? data + off : (const uint8_t *)"", len);
        return 0;
    }
    if (is_ab) {
        size_t size;
        uint8_t *data = JS_GetArrayBuffer(ctx, &size, v);
        if (data == NULL)
            size = 0;
        *out = owned_buf(AB_BYTES, data ? data : (const uint8_t *)"", size);
        return 0;
    }
    if (is_typed)
        return conv_fail("a typed array other than Uint8Array cannot be converted");

    if (JS_IsArray(ctx, v) > 0) {
        JSValue lv = JS_GetPropertyStr(ctx, v, "length");
        int64_t n = 0;
        if (JS_ToInt64(ctx, &n, lv) < 0) {
            JS_FreeValue(ctx, lv);
            return -2;
        }
        JS_FreeValue(ctx, lv);
        if (n < 0 || n > (1 << 24))
            return conv_fail("an array of %lld items is too long", (long long)n);
        ab_value *items = xcalloc((size_t)n, sizeof *items);
        *out = ab_owned(ab_list(items, (size_t)n));
        for (int64_t i = 0; i < n; i++) {
            JSValue item = JS_GetPropertyUint32(ctx, v, (uint32_t)i);
            if (JS_IsException(item))
                return -2;
            size_t old = path_push("[%lld]", (long long)i);
            int rc = to_ab(item, &items[i], depth + 1);
            JS_FreeValue(ctx, item);
            if (rc < 0)
                return rc;
            path_pop(old);
        }
        return 0;
    }

    JSPropertyEnum *props;
    uint32_t n;
    if (JS_GetOwnPropertyNames(ctx, &props, &n, v, JS_GPN_STRING_MASK | JS_GPN_ENUM_ONLY) < 0)
        return -2;
    ab_entry *entries = xcalloc(n, sizeof *entries);
    *out = ab_owned(ab_dict(entries, n));
    int rc = 0;
    uint32_t i = 0;
    for (; i < n && rc == 0; i++) {
        size_t klen;
        JSValue key = JS_AtomToString(ctx, props[i].atom);
        const char *k = JS_ToCStringLen(ctx, &klen, key);
        JS_FreeValue(ctx, key);
        if (k == NULL) {
            rc = -2;
            break;
        }
        size_t old = path_push_key(k, klen);
        if (!utf8_valid((const unsigned char *)k, klen)) {
            rc = conv_fail("a key with a lone surrogate cannot be converted");
            JS_FreeCString(ctx, k);
            break;
        }
        ab_value kv = owned_buf(AB_STR, k, klen);
        JS_FreeCString(ctx, k);
        entries[i].key = kv.buf.ptr;
        entries[i].key_len = klen;
        entries[i].key_owned = true;
        JSValue item = JS_GetProperty(ctx, v, props[i].atom);
        if (JS_IsException(item)) {
            rc = -2;
            break;
        }
        rc = to_ab(item, &entries[i].value, depth + 1);
        JS_FreeValue(ctx, item);
        if (rc == 0)
            path_pop(old);
    }
    for (uint32_t j = 0; j < n; j++)
        JS_FreeAtom(ctx, props[j].atom);
    js_free(ctx, props);
    return rc;
}

/* 0 on success; -1 with conv_error set; -2 with a JS exception pending.
 * On failure *out holds what was built so far (free it). */
static int to_ab(JSValueConst v, ab_value *out, int depth) {
    *out = ab_none();
    int tag = JS_VALUE_GET_NORM_TAG(v);
    switch (tag) {
    case JS_TAG_UNDEFINED:
    case JS_TAG_NULL:
        return 0;
    case JS_TAG_BOOL:
        *out = ab_bool(JS_VALUE_GET_BOOL(v));
        return 0;
    case JS_TAG_INT:
        *out = ab_int(JS_VALUE_GET_INT(v));
        return 0;
    case JS_TAG_FLOAT64: {
        double d = JS_VALUE_GET_FLOAT64(v);
        if (isfinite(d) && d == trunc(d) && fabs(d) <= TWO53 && !(d == 0 && signbit(d)))
            *out = ab_int((int64_t)d);
        else
            *out = ab_float(d);
        return 0;
    }
    case JS_TAG_STRING:
        return to_ab_string(v, out);
    case JS_TAG_SYMBOL:
        return conv_fail("a symbol cannot be converted");
    case JS_TAG_BIG_INT: {
        const char *s = JS_ToCString(ctx, v);
        if (s == NULL)
            return -2;
        char *end;
        errno = 0;
        long long i = strtoll(s, &end, 10);
        bool ok = errno == 0 && *end == '\0';
        JS_FreeCString(ctx, s);
        if (!ok)
            return conv_fail("a BigInt outside the signed 64-bit range cannot be converted");
        *out = ab_int(i);
        return 0;
    }
    case JS_TAG_OBJECT:
        return to_ab_object(v, out, depth);
    default:
        return conv_fail("a value of this type (tag %d) cannot be converted", tag);
    }
}

/* ---- ab_value -> JS ------------------------------------------------------------------ */

static JSValue from_ab(const ab_value *v) {
    switch (v->type) {
    case AB_BOOL:
        return JS_NewBool(ctx, v->b);
    case AB_INT:
        if (v->i >= -(int64_t)TWO53 && v->i <= (int64_t)TWO53)
            return JS_NewInt64(ctx, v->i);
        return JS_NewBigInt64(ctx, v->i);
    case AB_FLOAT:
        return JS_NewFloat64(ctx, v->f);
    case AB_STR:
        return JS_NewStringLen(ctx, v->buf.ptr, v->buf.len);
    case AB_BYTES: {
        JSValue buf = JS_NewArrayBufferCopy(ctx, v->buf.ptr, v->buf.len);
        if (JS_IsException(buf))
            return buf;
        JSValue arr = JS_CallConstructor(ctx, u8_ctor, 1, (JSValueConst *)&buf);
        JS_FreeValue(ctx, buf);
        return arr;
    }
    case AB_LIST: {
        JSValue arr = JS_NewArray(ctx);
        for (size_t i = 0; i < v->list.len && !JS_IsException(arr); i++) {
            JSValue item = from_ab(&v->list.items[i]);
            if (JS_IsException(item) || JS_SetPropertyUint32(ctx, arr, (uint32_t)i, item) < 0) {
                JS_FreeValue(ctx, arr);
                return JS_EXCEPTION;
            }
        }
        return arr;
    }
    case AB_DICT: {
        JSValue obj = JS_NewObject(ctx);
        for (size_t i = 0; i < v->dict.len && !JS_IsException(obj); i++) {
            const ab_entry *e = &v->dict.entries[i];
            JSValue item = from_ab(&e->value);
            JSAtom atom = JS_IsException(item) ? JS_ATOM_NULL : JS_NewAtomLen(ctx, e->key, e->key_len);
            if (atom == JS_ATOM_NULL ||
                JS_DefinePropertyValue(ctx, obj, atom, item, JS_PROP_C_W_E) < 0) {
                if (atom == JS_ATOM_NULL)
                    JS_FreeValue(ctx, item);
                else
                    JS_FreeAtom(ctx, atom);
                JS_FreeValue(ctx, obj);
                return JS_EXCEPTION;
            }
            JS_FreeAtom(ctx, atom);
        }
        return obj;
    }
    default:
        return JS_NULL;
    }
}

/* ---- jobs, promises and unhandled rejections ---------------------------------------------------- */

static JSValue promise_ctor; /* Promise, as it was before any script ran */
static JSValue settle_fn;    /* from the prelude: p -> {state: 0 pending | 1 fulfilled | 2 rejected, value} */

/* Runs pending jobs (promise reactions) until none is left. 0, or -1 with
 * the exception of a job that failed pending (a reaction that throws only
 * rejects its promise: this is out of memory, stack overflow and the like). */
static int run_jobs(void) {
    JSContext *c;
    int r;
    while ((r = JS_ExecutePendingJob(rt, &c)) > 0) {
    }
    return r;
}

enum { SETTLED = 0, FAILED = -1, NEVER_SETTLES = -2 };

/* If *v is a Promise, replaces it by the value it settles to, running
 * pending jobs until it does. SETTLED (*v is a value), FAILED (*v freed, an
 * exception pending: the rejection reason or a job's failure) or
 * NEVER_SETTLES (*v freed: no job is left that could settle it; whatever it
 * waits for cannot happen, as nothing outside the script resolves promises). */
static int settle(JSValue *v) {
    int is_promise = JS_IsObject(*v) ? JS_IsInstanceOf(ctx, *v, promise_ctor) : 0;
    if (is_promise <= 0) {
        if (is_promise == 0)
            return SETTLED;
        JS_FreeValue(ctx, *v); /* a Proxy's getPrototypeOf trap threw */
        *v = JS_UNDEFINED;
        return FAILED;
    }
    JSValue s = JS_Call(ctx, settle_fn, JS_UNDEFINED, 1, (JSValueConst *)v);
    JS_FreeValue(ctx, *v);
    *v = JS_UNDEFINED;
    if (JS_IsException(s))
        return FAILED;
    int rc;
    for (;;) {
        int32_t state = 0;
        JSValue st = JS_GetPropertyStr(ctx, s, "state");
        JS_ToInt32(ctx, &state, st); /* an int: s is ours, no script sees it */
        JS_FreeValue(ctx, st);
        if (state == 1) {
            *v = JS_GetPropertyStr(ctx, s, "value");
            rc = SETTLED;
            break;
        }
        if (state == 2) {
            JS_Throw(ctx, JS_GetPropertyStr(ctx, s, "value"));
            rc = FAILED;
            break;
        }
        JSContext *c;
        int r = JS_ExecutePendingJob(rt, &c);
        if (r != 1) {
            rc = r < 0 ? FAILED : NEVER_SETTLES;
            break;
        }
    }
    JS_FreeValue(ctx, s);
    return rc;
}

/* Promises rejected with no handler (yet), reported when the call ends:
 * the tracker adds a promise when it is rejected unhandled and removes it
 * when a handler is attached later. At most MAX_UNHANDLED are kept. */
#define MAX_UNHANDLED 8
static struct {
    JSValue promise, reason;
} unhandled[MAX_UNHANDLED];
static int n_unhandled, n_unhandled_dropped;

static void track_rejection(JSContext *c, JSValueConst promise, JSValueConst reason, JS_BOOL is_handled,
                            void *opaque) {
    (void)opaque;
    if (is_handled) {
        for (int i = 0; i < n_unhandled; i++)
            if (JS_VALUE_GET_PTR(unhandled[i].promise) == JS_VALUE_GET_PTR(promise)) {
                JS_FreeValue(c, unhandled[i].promise);
                JS_FreeValue(c, unhandled[i].reason);
                unhandled[i] = unhandled[--n_unhandled];
                return;
            }
        return;
    }
    if (n_unhandled == MAX_UNHANDLED) {
        n_unhandled_dropped++;
        return;
    }
    unhandled[n_unhandled].promise = JS_DupValue(c, promise);
    unhandled[n_unhandled].reason = JS_DupValue(c, reason);
    n_unhandled++;
}

/* At the end of a call: one WARNING log record per rejection still unhandled.
 * Showing a reason may run script code (its toString), which may reject
 * promises or handle them: the list is taken and emptied first, so the
 * tracker only ever sees a list this loop no longer reads; what that code
 * adds is reported at the end of the next call. */
static void report_unhandled(void) {
    struct {
        JSValue promise, reason;
    } taken[MAX_UNHANDLED];
    int n = n_unhandled, dropped = n_unhandled_dropped;
    memcpy(taken, unhandled, (size_t)n * sizeof taken[0]);
    n_unhandled = n_unhandled_dropped = 0;
    for (int i = 0; i < n; i++) {
        const char *reason = JS_ToCString(ctx, taken[i].reason);
        if (reason == NULL)
            JS_FreeValue(ctx, JS_GetException(ctx));
        ab_log(AB_LOG_WARNING, "unhandled promise rejection: %s", reason ? reason : "(a value that cannot be shown)");
        if (reason)
            JS_FreeCString(ctx, reason);
        JS_FreeValue(ctx, taken[i].promise);
        JS_FreeValue(ctx, taken[i].reason);
    }
    if (dropped)
        ab_log(AB_LOG_WARNING, "%d more unhandled promise rejections", dropped);
}

/* ---- results --------------------------------------------------------------------------- */

/* The envelope for the pending exception. */
static ab_value error_result(void) {
    JSValue exc = JS_GetException(ctx);
    size_t mlen = 0, slen = 0;
    const char *msg = JS_ToCStringLen(ctx, &mlen, exc);
    const char *stack = NULL;
    if (JS_IsObject(exc)) {
        JSValue st = JS_GetPropertyStr(ctx, exc, "stack");
        if (JS_IsString(st))
            stack = JS_ToCStringLen(ctx, &slen, st);
        JS_FreeValue(ctx, st);
        if (JS_IsException(st))
            JS_FreeValue(ctx, JS_GetException(ctx));
    }
    if (msg == NULL) {
        JS_FreeValue(ctx, JS_GetException(ctx));
        msg = NULL;
    }
    ab_value out = envelope_error(msg ? msg : "(an exception that cannot be shown)", msg ? mlen : 35,
                                  stack ? stack : "", stack ? slen : 0);
    if (msg)
        JS_FreeCString(ctx, msg);
    if (stack)
        JS_FreeCString(ctx, stack);
    JS_FreeValue(ctx, exc);
    return out;
}

static const char never_settles[] = "the promise never settled: no pending job is left that could settle it";

/* The envelope for `v` (consumed): a promise is awaited first, then the
 * pending jobs are run, then the value is converted with root path `root`
 * (or dropped, if root is NULL). Every call ends here. */
static ab_value result_of(JSValue v, const char *root) {
    ab_value out;
    int rc = JS_IsException(v) ? FAILED : settle(&v);
    if (rc == SETTLED && run_jobs() < 0) {
        JS_FreeValue(ctx, v);
        rc = FAILED;
    }
    if (rc == FAILED) {
        out = error_result();
    } else if (rc == NEVER_SETTLES) {
        out = envelope_error(never_settles, sizeof never_settles - 1, "", 0);
    } else if (root == NULL) {
        JS_FreeValue(ctx, v);
        out = envelope_ok(ab_none());
    } else {
        path_reset(root);
        int conv = to_ab(v, &out, 0);
        JS_FreeValue(ctx, v);
        if (conv < 0) {
            ab_value_free(&out);
            out = conv == -2 ? error_result() : envelope_error(conv_error, strlen(conv_error), "", 0);
        } else {
            out = envelope_ok(out);
        }
    }
    report_unhandled();
    return out;
}

static ab_value js_eval(const char *code) {
    JSValue v = JS_Eval(ctx, code, strlen(code), "<eval>", JS_EVAL_TYPE_GLOBAL);
    return result_of(v, "result");
}
AB_EXPORT_AS("eval", js_eval, AB_ANY, AB_STR);

static ab_value js_exec(const char *code) {
    JSValue v = JS_Eval(ctx, code, strlen(code), "<exec>", JS_EVAL_TYPE_GLOBAL);
    return result_of(v, NULL);
}
AB_EXPORT_AS("exec", js_exec, AB_ANY, AB_STR);

static ab_value js_call(const char *name, const ab_value *args) {
    JSValue global = JS_GetGlobalObject(ctx);
    JSValue fn = JS_GetPropertyStr(ctx, global, name);
    JS_FreeValue(ctx, global);
    if (JS_IsException(fn))
        return result_of(JS_EXCEPTION, NULL);
    if (!JS_IsFunction(ctx, fn)) {
        JS_FreeValue(ctx, fn);
        JS_ThrowTypeError(ctx, "%s is not a function", name);
        return result_of(JS_EXCEPTION, NULL);
    }
    size_t n = args->type == AB_LIST ? args->list.len : 0;
    JSValue *argv = xcalloc(n, sizeof *argv);
    for (size_t i = 0; i < n; i++) {
        argv[i] = from_ab(&args->list.items[i]);
        if (JS_IsException(argv[i])) {
            for (size_t j = 0; j < i; j++)
                JS_FreeValue(ctx, argv[j]);
            free(argv);
            JS_FreeValue(ctx, fn);
            return result_of(JS_EXCEPTION, NULL);
        }
    }
    JSValue v = JS_Call(ctx, fn, JS_UNDEFINED, (int)n, (JSValueConst *)argv);
    for (size_t i = 0; i < n; i++)
        JS_FreeValue(ctx, argv[i]);
    free(argv);
    JS_FreeValue(ctx, fn);
    char root[300];
    snprintf(root, sizeof root, "%s() result", name);
    return result_of(v, root);
}
AB_EXPORT_AS("call", js_call, AB_ANY, AB_STR, AB_ANY);

/* ---- print, console and host ------------------------------------------------------------- */

/* __log(level, text) */
static JSValue js_log(JSContext *c, JSValueConst this_val, int argc, JSValueConst *argv) {
    int32_t level = AB_LOG_INFO;
    if (argc > 0)
        JS_ToInt32(c, &level, argv[0]);
    const char *s = argc > 1 ? JS_ToCString(c, argv[1]) : NULL;
    if (s == NULL)
        return JS_EXCEPTION;
    ab_log(level, "%s", s);
    JS_FreeCString(c, s);
    return JS_UNDEFINED;
}

/* __host(name, args) */
static JSValue js_host(JSContext *c, JSValueConst this_val, int argc, JSValueConst *argv) {
    size_t nlen;
    const char *name = JS_ToCStringLen(c, &nlen, argv[0]);
    if (name == NULL)
        return JS_EXCEPTION;
    char root[300];
    snprintf(root, sizeof root, "host.%.200s() arguments", name);
    path_reset(root);
    ab_value args;
    int rc = to_ab(argv[1], &args, 0);
    if (rc < 0) {
        ab_value_free(&args);
        JS_FreeCString(c, name);
        if (rc == -1)
            return JS_ThrowTypeError(c, "%s", conv_error);
        return JS_EXCEPTION;
    }
    ab_value reply;
    const ab_value *result;
    rc = script_host_call(name, nlen, args, &reply, &result);
    JS_FreeCString(c, name);
    if (rc != 0) {
        JSValue err = JS_NewError(c);
        JS_DefinePropertyValueStr(c, err, "message", JS_NewStringLen(c, result->buf.ptr, result->buf.len),
                                  JS_PROP_WRITABLE | JS_PROP_CONFIGURABLE);
        JS_DefinePropertyValueStr(c, err, "name", JS_NewString(c, "HostError"),
                                  JS_PROP_WRITABLE | JS_PROP_CONFIGURABLE);
        ab_value_free(&reply);
        return JS_Throw(c, err);
    }
    JSValue v = from_ab(result);
    ab_value_free(&reply);
    return v;
}

static const char PRELUDE[] =
    "(function (log, hostcall) {\n"
    "  'use strict';\n"
    "  const show = (a) => {\n"
    "    if (typeof a === 'string') return a;\n"
    "    if (typeof a === 'function' || typeof a === 'symbol' || typeof a === 'bigint' || a === undefined)"
    " return String(a);\n"
    "    try { const s = JSON.stringify(a); return s === undefined ? String(a) : s; } catch (e) { return String(a); }\n"
    "  };\n"
    "  const logger = (level) => (...args) => log(level, args.map(show).join(' '));\n"
    "  globalThis.console = { log: logger(20), info: logger(20), debug: logger(10), warn: logger(30),"
    " error: logger(40) };\n"
    "  globalThis.print = logger(20);\n"
    "  globalThis.host = new Proxy(Object.freeze({}), {\n"
    "    get(target, name) {\n"
    "      if (typeof name !== 'string' || name === 'then') return undefined;\n"
    "      return (...args) => hostcall(name, args);\n"
    "    },\n"
    "  });\n"
    "  const then = Promise.prototype.then, apply = Reflect.apply;\n"
    "  return (p) => {\n" /* settle_fn */
    "    const s = { state: 0, value: undefined };\n"
    "    apply(then, p, [(v) => { s.state = 1; s.value = v; }, (e) => { s.state = 2; s.value = e; }]);\n"
    "    return s;\n"
    "  };\n"
    "})";

__attribute__((constructor)) static void js_init(void) {
    rt = JS_NewRuntime();
    if (rt == NULL)
        ab_abort(12, "JS_NewRuntime failed");
    JS_SetMaxStackSize(rt, 128 * 1024); /* well inside the guest's stack */
    ctx = JS_NewContext(rt);
    if (ctx == NULL)
        ab_abort(12, "JS_NewContext failed");
    JSValue global = JS_GetGlobalObject(ctx);
    u8_ctor = JS_GetPropertyStr(ctx, global, "Uint8Array");
    ab_ctor = JS_GetPropertyStr(ctx, global, "ArrayBuffer");
    promise_ctor = JS_GetPropertyStr(ctx, global, "Promise");
    JS_FreeValue(ctx, global);
    JS_SetHostPromiseRejectionTracker(rt, track_rejection, NULL);
    typed_ctor = JS_GetPrototype(ctx, u8_ctor); /* %TypedArray% */
    typed_ctor = JS_DupValue(ctx, typed_ctor);
    JSValue setup = JS_Eval(ctx, PRELUDE, sizeof PRELUDE - 1, "<prelude>", JS_EVAL_TYPE_GLOBAL);
    if (JS_IsException(setup))
        ab_abort(1, "the JavaScript prelude failed");
    JSValue fns[2] = {JS_NewCFunction(ctx, js_log, "log", 2), JS_NewCFunction(ctx, js_host, "host", 2)};
    settle_fn = JS_Call(ctx, setup, JS_UNDEFINED, 2, (JSValueConst *)fns);
    if (!JS_IsFunction(ctx, settle_fn))
        ab_abort(1, "the JavaScript prelude failed");
    JS_FreeValue(ctx, fns[0]);
    JS_FreeValue(ctx, fns[1]);
    JS_FreeValue(ctx, setup);
}
