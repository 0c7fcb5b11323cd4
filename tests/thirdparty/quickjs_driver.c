/* QuickJS in a guest. eval(code) evaluates a script in one persistent
 * context and returns the completion value as a string; an exception gives
 * "error: <exception>". Built by tests/test_thirdparty.py with quickjs.c,
 * libregexp.c, libunicode.c, cutils.c and libbf.c (aionub._sources "quickjs"). */
#include <aionub_guest.h>
#include <stdlib.h>
#include <string.h>

#include "quickjs.h"

static JSRuntime *rt;
static JSContext *ctx;
static char *result; /* the last result; freed on the next call */

static const char *keep(const char *prefix, const char *s) {
    size_t p = strlen(prefix), n = strlen(s);
    free(result);
    result = malloc(p + n + 1);
    if (result == NULL)
        ab_abort(12, "no memory for a %zu-byte result", n);
    memcpy(result, prefix, p);
    memcpy(result + p, s, n + 1);
    return result;
}

static const char *js_eval(const char *code) {
    if (ctx == NULL) {
        rt = JS_NewRuntime();
        if (rt == NULL)
            ab_abort(12, "JS_NewRuntime failed");
        JS_SetMaxStackSize(rt, 128 * 1024); /* well inside the guest's stack */
        ctx = JS_NewContext(rt);
        if (ctx == NULL)
            ab_abort(12, "JS_NewContext failed");
    }
    JSValue v = JS_Eval(ctx, code, strlen(code), "<eval>", JS_EVAL_TYPE_GLOBAL);
    const char *prefix = "";
    if (JS_IsException(v)) {
        v = JS_GetException(ctx);
        prefix = "error: ";
    }
    const char *s = JS_ToCString(ctx, v);
    const char *out = keep(prefix, s ? s : "(not convertible to a string)");
    JS_FreeCString(ctx, s);
    JS_FreeValue(ctx, v);
    return out;
}
AB_EXPORT_AS("eval", js_eval, AB_STR, AB_STR);
