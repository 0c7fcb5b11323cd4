/* The native side of bench_scripts.py: one script engine (QuickJS with
 * -DENGINE_JS, Lua 5.4 with -DENGINE_LUA), compiled from the same pinned
 * sources as the runtime guests, in a plain host process.
 *
 *     scripts_native SETUP_FILE TIMED_FILE
 *
 * runs SETUP_FILE once and TIMED_FILE once untimed (a warm-up: the heap's
 * first pages, the code's first faults), then for each line read from stdin
 * runs TIMED_FILE once more and prints "WALL_NS CPU_NS" (CLOCK_MONOTONIC and
 * CLOCK_THREAD_CPUTIME_ID around the engine's eval) on a line of its own,
 * flushed. One process serves a whole benchmark, so that its runs can
 * alternate with the guest's one by one. */
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

static int64_t now_ns(clockid_t clock) {
    struct timespec ts;
    clock_gettime(clock, &ts);
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
    if (argc != 3) {
        fprintf(stderr, "usage: %s SETUP_FILE TIMED_FILE (then one line on stdin per timed run)\n", argv[0]);
        return 2;
    }
    char *setup = slurp(argv[1]), *timed = slurp(argv[2]);
    open_engine();
    run(setup, "setup");
    run(timed, "warm-up");
    char line[64];
    while (fgets(line, sizeof line, stdin)) {
        int64_t w0 = now_ns(CLOCK_MONOTONIC), c0 = now_ns(CLOCK_THREAD_CPUTIME_ID);
        run(timed, "timed");
        int64_t c1 = now_ns(CLOCK_THREAD_CPUTIME_ID), w1 = now_ns(CLOCK_MONOTONIC);
        printf("%lld %lld\n", (long long)(w1 - w0), (long long)(c1 - c0));
        fflush(stdout);
    }
    return 0;
}
