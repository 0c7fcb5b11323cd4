/* The native side of bench_scripts.py: one script engine (QuickJS with
 * -DENGINE_JS, Lua 5.4 with -DENGINE_LUA), compiled from the same pinned
 * sources as the runtime guests, in a plain host process.
 *
 *     scripts_native SETUP_FILE TIMED_FILE REPS
 *
 * runs SETUP_FILE once, then TIMED_FILE REPS times, and prints the time of
 * each run of TIMED_FILE in nanoseconds (CLOCK_MONOTONIC around the
 * engine's eval), one per line. Startup and the setup are not timed. */
#define _GNU_SOURCE
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#if defined(ENGINE_JS)
#include "quickjs.h"
#elif defined(ENGINE_LUA)
#include "lauxlib.h"
#include "lua.h"
#include "lualib.h"
#else
#error "define ENGINE_JS or ENGINE_LUA"
#endif

static char *slurp(const char *path) {
    FILE *f = fopen(path, "rb");
    if (!f) {
        perror(path);
        exit(2);
    }
    fseek(f, 0, SEEK_END);
    long n = ftell(f);
    fseek(f, 0, SEEK_SET);
    char *buf = malloc((size_t)n + 1);
    if (!buf || fread(buf, 1, (size_t)n, f) != (size_t)n) {
        fprintf(stderr, "%s: read failed\n", path);
        exit(2);
    }
    buf[n] = 0;
    fclose(f);
    return buf;
}

static int64_t now_ns(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000000000 + ts.tv_nsec;
}

#if defined(ENGINE_JS)
static JSContext *ctx;

static void run(const char *code, const char *name) {
    JSValue v = JS_Eval(ctx, code, strlen(code), name, JS_EVAL_TYPE_GLOBAL);
    if (JS_IsException(v)) {
        JSValue e = JS_GetException(ctx);
        const char *s = JS_ToCString(ctx, e);
        fprintf(stderr, "%s: %s\n", name, s ? s : "exception");
        exit(1);
    }
    JS_FreeValue(ctx, v);
}

static void open_engine(void) {
    JSRuntime *rt = JS_NewRuntime();
    ctx = rt ? JS_NewContext(rt) : NULL;
    if (!ctx) {
        fprintf(stderr, "cannot create a QuickJS context\n");
        exit(2);
    }
}
#else
static lua_State *L;

static void run(const char *code, const char *name) {
    if (luaL_loadbuffer(L, code, strlen(code), name) != LUA_OK || lua_pcall(L, 0, 0, 0) != LUA_OK) {
        fprintf(stderr, "%s: %s\n", name, lua_tostring(L, -1));
        exit(1);
    }
}

static void open_engine(void) {
    L = luaL_newstate();
    if (!L) {
        fprintf(stderr, "cannot create a Lua state\n");
        exit(2);
    }
    luaL_openlibs(L);
}
#endif

int main(int argc, char **argv) {
    if (argc != 4) {
        fprintf(stderr, "usage: %s SETUP_FILE TIMED_FILE REPS\n", argv[0]);
        return 2;
    }
    char *setup = slurp(argv[1]), *timed = slurp(argv[2]);
    int reps = atoi(argv[3]);
    open_engine();
    run(setup, "setup");
    for (int i = 0; i < reps; i++) {
        int64_t t0 = now_ns();
        run(timed, "timed");
        printf("%lld\n", (long long)(now_ns() - t0));
    }
    return 0;
}
