/* The Lua runtime guest: Lua 5.4 in one persistent state.
 *
 *   eval(code: str) -> any     run a chunk (as `return <code>` when that
 *                              compiles, like Lua's REPL); its first result
 *   exec(code: str) -> any     run a chunk, return None
 *   call(name: str, args: any) -> any
 *                              call the global function `name` with the list
 *                              args; its first result
 *
 * Every result is an envelope (common.h). Conversions (docs/scripts.md):
 *
 *   Lua -> Python: nil and `null` -> None; booleans; integer -> int; float
 *   -> float; a string that is valid UTF-8 -> str, any other string ->
 *   bytes; a table whose keys are exactly 1..n (n >= 1) -> list; an empty
 *   table -> dict, unless it came from an empty list; any other table ->
 *   dict, whose keys must all be UTF-8 strings; functions, userdata,
 *   threads, other keys and cycles -> an error naming the path.
 *
 *   Python -> Lua: None -> nil for an argument or a host function's result,
 *   `null` inside lists and dicts (so that they keep their shape); int ->
 *   integer; float -> float; str and bytes -> string; list -> table 1..n;
 *   dict -> table.
 *
 * print(...) sends an INFO log record; host.name(...) calls the host
 * function `name`. Built by setup.py with Lua's sources (aionub._sources
 * "lua54").
 */
#include "common.h"

#include "lauxlib.h"
#include "lua.h"
#include "lualib.h"

static lua_State *L;
static int list_mt_ref; /* metatable of tables made from empty lists */

#define IS_NULL(L, i) (lua_islightuserdata(L, i) && lua_touserdata(L, i) == NULL)

/* ---- Lua -> ab_value ------------------------------------------------------------------ */

static const void *seen[SCRIPT_MAX_DEPTH + 1];

static int to_ab(int idx, ab_value *out, int depth);

static int is_list_table(int idx) {
    if (!lua_getmetatable(L, idx))
        return 0;
    lua_rawgeti(L, LUA_REGISTRYINDEX, list_mt_ref);
    int same = lua_rawequal(L, -1, -2);
    lua_pop(L, 2);
    return same;
}

static int to_ab_table(int idx, ab_value *out, int depth) {
    const void *ptr = lua_topointer(L, idx);
    for (int i = 0; i < depth; i++)
        if (seen[i] == ptr)
            return conv_fail("a cycle cannot be converted (the table contains itself)");
    if (depth >= SCRIPT_MAX_DEPTH)
        return conv_fail("tables nest deeper than %d levels", SCRIPT_MAX_DEPTH);
    if (!lua_checkstack(L, 8))
        return conv_fail("the Lua stack is full");
    seen[depth] = ptr;

    /* Count the keys; is it a sequence 1..n? */
    size_t count = 0;
    bool seq = true;
    lua_Integer max = 0;
    lua_pushnil(L);
    while (lua_next(L, idx) != 0) {
        count++;
        if (seq && lua_isinteger(L, -2)) {
            lua_Integer k = lua_tointeger(L, -2);
            if (k < 1)
                seq = false;
            else if (k > max)
                max = k;
        } else {
            seq = false;
        }
        lua_pop(L, 1);
    }
    if (count == 0 && is_list_table(idx)) {
        *out = ab_owned(ab_list(xcalloc(0, sizeof(ab_value)), 0));
        return 0;
    }
    if (count > 0 && seq && (size_t)max == count) {
        ab_value *items = xcalloc(count, sizeof *items);
        *out = ab_owned(ab_list(items, count));
        for (size_t i = 0; i < count; i++) {
            lua_rawgeti(L, idx, (lua_Integer)i + 1);
            size_t old = path_push("[%zu]", i + 1);
            int rc = to_ab(lua_gettop(L), &items[i], depth + 1);
            lua_pop(L, 1);
            if (rc < 0)
                return rc;
            path_pop(old);
        }
        return 0;
    }
    ab_entry *entries = xcalloc(count, sizeof *entries);
    *out = ab_owned(ab_dict(entries, 0));
    size_t n = 0;
    lua_pushnil(L);
    while (lua_next(L, idx) != 0) {
        if (lua_type(L, -2) != LUA_TSTRING) {
            const char *tn = luaL_typename(L, -2); /* a static string */
            if (lua_isinteger(L, -2))
                path_push("[%lld]", (long long)lua_tointeger(L, -2));
            lua_pop(L, 2);
            return conv_fail("a table key of type %s cannot be converted (keys must be strings, "
                             "or exactly 1..n for a list)", tn);
        }
        size_t klen;
        const char *k = lua_tolstring(L, -2, &klen);
        size_t old = path_push_key(k, klen);
        if (!utf8_valid((const unsigned char *)k, klen)) {
            lua_pop(L, 2);
            return conv_fail("a table key that is not UTF-8 cannot be converted");
        }
        ab_value kv = owned_buf(AB_STR, k, klen);
        entries[n].key = kv.buf.ptr;
        entries[n].key_len = klen;
        entries[n].key_owned = true;
        n++;
        out->dict.len = n;
        int rc = to_ab(lua_gettop(L), &entries[n - 1].value, depth + 1);
        lua_pop(L, 1);
        if (rc < 0) {
            lua_pop(L, 1);
            return rc;
        }
        path_pop(old);
    }
    return 0;
}

/* 0 on success, -1 with conv_error set (*out then holds what was built: free it). */
static int to_ab(int idx, ab_value *out, int depth) {
    *out = ab_none();
    switch (lua_type(L, idx)) {
    case LUA_TNIL:
    case LUA_TNONE:
        return 0;
    case LUA_TBOOLEAN:
        *out = ab_bool(lua_toboolean(L, idx));
        return 0;
    case LUA_TNUMBER:
        if (lua_isinteger(L, idx))
            *out = ab_int(lua_tointeger(L, idx));
        else
            *out = ab_float(lua_tonumber(L, idx));
        return 0;
    case LUA_TSTRING: {
        size_t len;
        const char *s = lua_tolstring(L, idx, &len);
        *out = owned_buf(utf8_valid((const unsigned char *)s, len) ? AB_STR : AB_BYTES, s, len);
        return 0;
    }
    case LUA_TTABLE:
        return to_ab_table(idx, out, depth);
    case LUA_TLIGHTUSERDATA:
        if (IS_NULL(L, idx))
            return 0;
        return conv_fail("a light userdata cannot be converted");
    default:
        return conv_fail("a %s cannot be converted", luaL_typename(L, idx));
    }
}

/* ---- ab_value -> Lua ------------------------------------------------------------------------ */

/* Pushes `v`; `inner` says it is inside a list or dict (None -> null). */
static void push_ab(const ab_value *v, bool inner) {
    luaL_checkstack(L, 4, "converting a value");
    switch (v->type) {
    case AB_BOOL:
        lua_pushboolean(L, v->b);
        break;
    case AB_INT:
        lua_pushinteger(L, v->i);
        break;
    case AB_FLOAT:
        lua_pushnumber(L, v->f);
        break;
    case AB_STR:
    case AB_BYTES:
        lua_pushlstring(L, v->buf.ptr, v->buf.len);
        break;
    case AB_LIST:
        lua_createtable(L, (int)v->list.len, 0);
        for (size_t i = 0; i < v->list.len; i++) {
            push_ab(&v->list.items[i], true);
            lua_rawseti(L, -2, (lua_Integer)i + 1);
        }
        if (v->list.len == 0) {
            lua_rawgeti(L, LUA_REGISTRYINDEX, list_mt_ref);
            lua_setmetatable(L, -2);
        }
        break;
    case AB_DICT:
        lua_createtable(L, 0, (int)v->dict.len);
        for (size_t i = 0; i < v->dict.len; i++) {
            lua_pushlstring(L, v->dict.entries[i].key, v->dict.entries[i].key_len);
            push_ab(&v->dict.entries[i].value, true);
            lua_rawset(L, -3);
        }
        break;
    default:
        if (inner)
            lua_pushlightuserdata(L, NULL);
        else
            lua_pushnil(L);
    }
}

/* ---- running code ------------------------------------------------------------------------------ */

/* The message handler: "<message>\nstack traceback:\n..." */
static int msgh(lua_State *S) {
    const char *msg = lua_tostring(S, 1);
    if (msg == NULL) {
        if (luaL_callmeta(S, 1, "__tostring") && lua_type(S, -1) == LUA_TSTRING)
            msg = lua_tostring(S, -1);
        else
            msg = lua_pushfstring(S, "(error object is a %s value)", luaL_typename(S, 1));
    }
    luaL_traceback(S, S, msg, 1);
    return 1;
}

static ab_value error_at_top(void) {
    size_t len;
    const char *all = lua_tolstring(L, -1, &len);
    if (all == NULL) {
        all = "(no error message)";
        len = strlen(all);
    }
    const char *tb = strstr(all, "\nstack traceback:\n");
    ab_value out = tb ? envelope_error(all, (size_t)(tb - all), tb + 1, len - (size_t)(tb - all) - 1)
                      : envelope_error(all, len, "", 0);
    return out;
}

/* Runs the function at the top (with nargs arguments above it) and returns the envelope. */
static ab_value run(int nargs, bool want_result, const char *root) {
    int base = lua_gettop(L) - nargs; /* the function's index */
    lua_pushcfunction(L, msgh);
    lua_insert(L, base);
    ab_value out;
    if (lua_pcall(L, nargs, want_result ? 1 : 0, base) != LUA_OK) {
        out = error_at_top();
    } else if (!want_result) {
        out = envelope_ok(ab_none());
    } else {
        ab_value value;
        path_reset(root);
        if (to_ab(lua_gettop(L), &value, 0) == 0) {
            out = envelope_ok(value);
        } else {
            ab_value_free(&value);
            out = envelope_error(conv_error, strlen(conv_error), "", 0);
        }
    }
    lua_settop(L, base - 1);
    return out;
}

static ab_value load(const char *code, bool expression_first) {
    size_t len = strlen(code);
    if (expression_first) {
        lua_pushliteral(L, "return ");
        lua_pushlstring(L, code, len);
        lua_concat(L, 2);
        size_t n;
        const char *ret = lua_tolstring(L, -1, &n);
        int rc = luaL_loadbuffer(L, ret, n, "=eval");
        lua_remove(L, -2);
        if (rc == LUA_OK)
            return ab_none();
        lua_pop(L, 1);
    }
    if (luaL_loadbuffer(L, code, len, expression_first ? "=eval" : "=exec") != LUA_OK) {
        ab_value out = error_at_top();
        lua_pop(L, 1);
        return out;
    }
    return ab_none();
}

static ab_value lua_eval(const char *code) {
    ab_value err = load(code, true);
    if (err.type != AB_VOID)
        return err;
    return run(0, true, "result");
}
AB_EXPORT_AS("eval", lua_eval, AB_ANY, AB_STR);

static ab_value lua_exec(const char *code) {
    ab_value err = load(code, false);
    if (err.type != AB_VOID)
        return err;
    return run(0, false, "result");
}
AB_EXPORT_AS("exec", lua_exec, AB_ANY, AB_STR);

static ab_value lua_call_export(const char *name, const ab_value *args) {
    lua_getglobal(L, name);
    if (lua_type(L, -1) != LUA_TFUNCTION && !luaL_getmetafield(L, -1, "__call")) {
        char msg[400];
        int n = snprintf(msg, sizeof msg, "attempt to call a %s value (global '%.200s')", luaL_typename(L, -1), name);
        lua_pop(L, 1);
        return envelope_error(msg, (size_t)n, "", 0);
    } else if (lua_type(L, -1) != LUA_TFUNCTION) {
        lua_pop(L, 1); /* the __call field; the callable value stays */
    }
    size_t n = args->type == AB_LIST ? args->list.len : 0;
    luaL_checkstack(L, (int)n + 4, "too many arguments");
    for (size_t i = 0; i < n; i++)
        push_ab(&args->list.items[i], false);
    char root[300];
    snprintf(root, sizeof root, "%.200s() result", name);
    return run((int)n, true, root);
}
AB_EXPORT_AS("call", lua_call_export, AB_ANY, AB_STR, AB_ANY);

/* ---- print and host ------------------------------------------------------------------------------- */

static int l_print(lua_State *S) {
    int n = lua_gettop(S);
    luaL_Buffer b;
    luaL_buffinit(S, &b);
    for (int i = 1; i <= n; i++) {
        if (i > 1)
            luaL_addchar(&b, '\t');
        luaL_tolstring(S, i, NULL);
        luaL_addvalue(&b);
    }
    luaL_pushresult(&b);
    ab_log(AB_LOG_INFO, "%s", lua_tostring(S, -1));
    return 0;
}

/* The function host.<name>: upvalue 1 is the name. */
static int l_host_fn(lua_State *S) {
    size_t nlen;
    const char *name = lua_tolstring(S, lua_upvalueindex(1), &nlen);
    int n = lua_gettop(S);
    ab_value *items = xcalloc((size_t)n, sizeof *items);
    ab_value args = ab_owned(ab_list(items, (size_t)n));
    char root[300];
    snprintf(root, sizeof root, "host.%.200s() argument ", name);
    path_reset(root);
    for (int i = 1; i <= n; i++) {
        size_t old = path_push("%d", i);
        if (to_ab(i, &items[i - 1], 0) < 0) {
            ab_value_free(&args);
            luaL_where(S, 1);
            lua_pushstring(S, conv_error);
            lua_concat(S, 2);
            return lua_error(S);
        }
        path_pop(old);
    }
    ab_value reply;
    const ab_value *result;
    int rc = script_host_call(name, nlen, args, &reply, &result);
    if (rc != 0) {
        luaL_where(S, 1);
        lua_pushlstring(S, result->buf.ptr, result->buf.len);
        ab_value_free(&reply);
        lua_concat(S, 2);
        return lua_error(S);
    }
    push_ab(result, false); /* a memory error here leaks the reply: rare, and bounded */
    ab_value_free(&reply);
    return 1;
}

/* host.__index(t, name) */
static int l_host_index(lua_State *S) {
    if (lua_type(S, 2) != LUA_TSTRING)
        return 0;
    lua_pushvalue(S, 2);
    lua_pushcclosure(S, l_host_fn, 1);
    return 1;
}

__attribute__((constructor)) static void lua_init(void) {
    L = luaL_newstate();
    if (L == NULL)
        ab_abort(12, "luaL_newstate failed");
    luaL_openlibs(L);
    lua_pushcfunction(L, l_print);
    lua_setglobal(L, "print");
    lua_pushlightuserdata(L, NULL);
    lua_setglobal(L, "null");
    lua_newtable(L); /* host */
    lua_newtable(L); /* its metatable */
    lua_pushcfunction(L, l_host_index);
    lua_setfield(L, -2, "__index");
    lua_setmetatable(L, -2);
    lua_setglobal(L, "host");
    lua_newtable(L);
    lua_pushliteral(L, "list");
    lua_setfield(L, -2, "__name");
    list_mt_ref = luaL_ref(L, LUA_REGISTRYINDEX);
}
