/* Lua 5.4 in a guest. eval(code) runs a chunk in one persistent state and
 * returns its first result through tostring(); main() runs the script read
 * from stdin, with print() and io.write() going to stdout.
 * Built by tests/test_thirdparty.py with Lua's core and library sources
 * (aionub._sources "lua54"). */
#include <aionub_guest.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "lauxlib.h"
#include "lua.h"
#include "lualib.h"

static lua_State *L;
static char *result; /* the last result; freed on the next call */

static const char *keep(const char *prefix, const char *s, size_t n) {
    size_t p = strlen(prefix);
    free(result);
    result = malloc(p + n + 1);
    if (result == NULL)
        ab_abort(12, "no memory for a %zu-byte result", n);
    memcpy(result, prefix, p);
    memcpy(result + p, s, n);
    result[p + n] = '\0';
    return result;
}

/* eval("return 6 * 7") == "42"; an error gives "error: <message>" */
static const char *eval(const char *code) {
    if (L == NULL) {
        L = luaL_newstate();
        if (L == NULL)
            ab_abort(12, "luaL_newstate failed");
        luaL_openlibs(L);
    }
    int top = lua_gettop(L);
    const char *out;
    size_t n;
    if (luaL_dostring(L, code) != LUA_OK) {
        const char *msg = lua_tolstring(L, -1, &n);
        out = keep("error: ", msg ? msg : "(no message)", msg ? n : 12);
    } else if (lua_gettop(L) > top) {
        const char *s = luaL_tolstring(L, top + 1, &n);
        out = keep("", s, n);
    } else {
        out = keep("", "", 0);
    }
    lua_settop(L, top);
    return out;
}
AB_EXPORT(eval, AB_STR, AB_STR);

static char *read_all(FILE *f, size_t *len) {
    size_t cap = 4096, n = 0;
    char *buf = malloc(cap);
    size_t got;
    while (buf != NULL && (got = fread(buf + n, 1, cap - n, f)) > 0) {
        n += got;
        if (n == cap) {
            char *bigger = realloc(buf, cap *= 2);
            if (bigger == NULL)
                free(buf);
            buf = bigger;
        }
    }
    *len = n;
    return buf;
}

/* `lua` with the script on stdin; arg[1..] are the other argv entries. */
int main(int argc, char **argv) {
    lua_State *S = luaL_newstate();
    if (S == NULL) {
        fputs("lua: cannot create a state\n", stderr);
        return 1;
    }
    luaL_openlibs(S);
    lua_createtable(S, argc, 0);
    for (int i = 0; i < argc; i++) {
        lua_pushstring(S, argv[i]);
        lua_rawseti(S, -2, i);
    }
    lua_setglobal(S, "arg");
    size_t len;
    char *script = read_all(stdin, &len);
    if (script == NULL) {
        fputs("lua: cannot read stdin\n", stderr);
        return 1;
    }
    int rc = luaL_loadbuffer(S, script, len, "=stdin") || lua_pcall(S, 0, 0, 0);
    free(script);
    if (rc != LUA_OK) {
        fprintf(stderr, "lua: %s\n", lua_tostring(S, -1));
        lua_close(S);
        return 1;
    }
    lua_close(S);
    return 0;
}
