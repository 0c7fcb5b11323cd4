"""Script sandboxes: JavaScript (QuickJS) and Lua 5.4 guests built at install
(aionub.JsSandbox, aionub.LuaSandbox; docs/scripts.md)."""

from __future__ import annotations

import asyncio
import json
import logging
import math
import subprocess
import sys
from collections.abc import AsyncIterator
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings, strategies as st

import aionub
import aionub._scripts as aionub_scripts

pytestmark = [pytest.mark.anyio, pytest.mark.timeout(300)]


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"

LANGS = ["js", "lua"]
CLASSES: dict[str, type[aionub.JsSandbox] | type[aionub.LuaSandbox]] = {
    "js": aionub.JsSandbox,
    "lua": aionub.LuaSandbox,
}
ECHO = {"js": "function echo(x) { return x }", "lua": "function echo(x) return x end"}


@pytest.fixture(params=LANGS)
async def script(request: pytest.FixtureRequest) -> AsyncIterator[Any]:
    async with CLASSES[request.param].create() as sb:
        yield sb


@pytest.fixture
async def js() -> AsyncIterator[aionub.JsSandbox]:
    async with aionub.JsSandbox.create() as sb:
        yield sb


@pytest.fixture
async def lua() -> AsyncIterator[aionub.LuaSandbox]:
    async with aionub.LuaSandbox.create() as sb:
        yield sb


def lang(sb: Any) -> str:
    return "js" if isinstance(sb, aionub.JsSandbox) else "lua"


# ---- eval, exec, call -------------------------------------------------------------------------


async def test_js_eval_exec_call(js: aionub.JsSandbox) -> None:
    assert await js.eval("1 + 2") == 3
    assert await js.eval("[1, 'a', {b: null, c: undefined}, true]") == [1, "a", {"b": None, "c": None}, True]
    assert await js.exec("var total = 0; function add(a, b) { total += a + b; return total }") is None
    assert await js.call("add", 2, 3) == 5
    assert await js.call("add", 1.5, 1) == 7.5
    assert await js.eval("total") == 7.5
    assert await js.eval("undefined") is None
    assert await js.call("parseInt", "42px") == 42


async def test_lua_eval_exec_call(lua: aionub.LuaSandbox) -> None:
    assert await lua.eval("1 + 2") == 3
    assert await lua.eval("return 7 // 2, 'second'") == 3  # the first result
    assert await lua.eval("{1, 'a', {b = 2}, true}") == [1, "a", {"b": 2}, True]
    assert await lua.exec("total = 0; function add(a, b) total = total + a + b; return total end") is None
    assert await lua.call("add", 2, 3) == 5
    assert await lua.call("add", 1.5, 1) == 7.5
    assert await lua.eval("total") == 7.5
    assert await lua.eval("nil") is None
    assert await lua.eval("x = 1") is None  # a statement: run as a chunk
    assert await lua.call("tostring", 12) == "12"


# ---- conversions --------------------------------------------------------------------------------


async def test_numbers(script: Any) -> None:
    await script.exec(ECHO[lang(script)])
    for value in [0, 1, -1, 2**31, 2**53, -(2**53), 2**53 + 1, -(2**53) - 1, 2**63 - 1, -(2**63)]:
        got = await script.call("echo", value)
        assert got == value and type(got) is int, value
    for f in [0.5, -0.0, 1e300, -1e-300, math.inf, -math.inf, 2.0**60, 0.1]:
        got = await script.call("echo", f)
        assert type(got) is float and got == f and math.copysign(1, got) == math.copysign(1, f), f
    assert math.isnan(await script.call("echo", math.nan))


async def test_js_number_rules(js: aionub.JsSandbox) -> None:
    assert await js.eval("2 ** 53") == 2**53 and type(await js.eval("2 ** 53")) is int
    assert type(await js.eval("2 ** 53 + 2")) is float  # beyond 2**53: a float
    assert await js.eval("3.0") == 3 and type(await js.eval("3.0")) is int  # integral numbers are ints
    got = await js.eval("-0")
    assert type(got) is float and math.copysign(1, got) == -1
    assert math.isnan(await js.eval("NaN")) and await js.eval("-Infinity") == -math.inf
    assert await js.eval("2n ** 62n") == 2**62
    assert await js.eval("typeof host_value") == "undefined"
    assert await js.call("String", 2**60) == str(2**60)  # a BigInt in JS
    with pytest.raises(aionub.ScriptError, match=r"result: a BigInt outside the signed 64-bit range"):
        await js.eval("2n ** 64n")
    await js.exec(ECHO["js"])
    assert await js.call("echo", 3.0) == 3  # an integral float comes back an int


async def test_lua_number_and_string_rules(lua: aionub.LuaSandbox) -> None:
    assert type(await lua.eval("3.0")) is float and type(await lua.eval("3")) is int
    assert await lua.eval("math.maxinteger") == 2**63 - 1
    assert await lua.eval("'\\xff\\x00'") == b"\xff\x00"  # not UTF-8: bytes
    assert await lua.eval("'h\\u{e9}'") == "hé"
    await lua.exec(ECHO["lua"])
    assert await lua.call("echo", b"abc") == "abc"  # bytes that are UTF-8 come back str
    assert await lua.call("echo", b"\x80") == b"\x80"
    assert await lua.call("echo", []) == []
    assert await lua.call("echo", {}) == {}
    assert await lua.eval("{}") == {}
    assert await lua.call("echo", [None, 1, None]) == [None, 1, None]  # None inside: null
    assert await lua.call("echo", {"a": None}) == {"a": None}
    assert await lua.eval("{null, 2}") == [None, 2]
    assert await lua.eval("select('#', ...)") == 0
    await lua.exec("function count(...) return select('#', ...) end function isnil(x) return x == nil end")
    assert await lua.call("count", None, None) == 2
    assert await lua.call("isnil", None) is True  # None as an argument: nil


async def test_strings_and_bytes(script: Any) -> None:
    await script.exec(ECHO[lang(script)])
    for s in ["", "a\x00b", "héllo", "日本語", "🎉 emoji", "\U0010ffff", "line\nbreak"]:
        assert await script.call("echo", s) == s
    if lang(script) == "js":
        for b in [b"", b"\x00\xff", bytes(range(256))]:
            assert await script.call("echo", b) == b
        assert await script.eval("new Uint8Array([1, 2, 255])") == b"\x01\x02\xff"
        assert await script.eval("new Uint8Array([1, 2, 3]).subarray(1)") == b"\x02\x03"
        assert await script.eval("new ArrayBuffer(2)") == b"\x00\x00"
        assert await script.eval("'🎉'.length") == 2
    else:
        assert await script.call("echo", bytes(range(256))) == bytes(range(256))
        assert await script.eval("#'🎉'") == 4


async def test_nested(script: Any) -> None:
    await script.exec(ECHO[lang(script)])
    value = {"a": [1, [2, [3, {"b": "c"}]]], "d": {"e": {"f": [True, False, 1.5]}}, "": "empty key"}
    assert await script.call("echo", value) == value
    deep: Any = 1
    for _ in range(55):
        deep = [deep]
    assert await script.call("echo", deep) == deep


@pytest.mark.parametrize(
    ("code", "message"),
    [
        ("({items: [1, 2, {fn: function () {}}]})", "result.items[2].fn: a function cannot be converted"),
        ("[Symbol('s')]", "result[0]: a symbol cannot be converted"),
        ("(() => { const o = {a: {}}; o.a.self = o; return o })()",
         "result.a.self: a cycle cannot be converted"),
        ("({'odd key': new Int32Array(1)})", 'result["odd key"]: a typed array other than Uint8Array'),
        ("'\\ud800'", "result: a string with a lone surrogate cannot be converted"),
    ],
)
async def test_js_not_convertible(js: aionub.JsSandbox, code: str, message: str) -> None:
    with pytest.raises(aionub.ScriptError, match="^" + message.replace("[", r"\[").replace("(", r"\(")):
        await js.eval(code)
    assert not js.poisoned and await js.eval("1") == 1


@pytest.mark.parametrize(
    ("code", "message"),
    [
        ("{items = {1, 2, {fn = print}}}", "result.items[3].fn: a function cannot be converted"),
        ("(function () local t = {}; t.me = t; return t end)()", "result.me: a cycle cannot be converted"),
        ("{[1] = 'a', [3] = 'c'}", "result[1]: a table key of type number cannot be converted"),
        ("{[true] = 1}", "result: a table key of type boolean cannot be converted"),
        ("coroutine.create(print)", "result: a thread cannot be converted"),
        ("io.stdout", "result: a userdata cannot be converted"),
    ],
)
async def test_lua_not_convertible(lua: aionub.LuaSandbox, code: str, message: str) -> None:
    with pytest.raises(aionub.ScriptError) as info:
        await lua.eval(code)
    assert info.value.message.startswith(message), info.value.message
    assert not lua.poisoned and await lua.eval("1") == 1


async def test_call_result_path(script: Any) -> None:
    code = {"js": "function f() { return {x: [Math.max]} }", "lua": "function f() return {x = {print}} end"}
    await script.exec(code[lang(script)])
    with pytest.raises(aionub.ScriptError, match=r"^f\(\) result\.x\[[01]\]: a function cannot be converted"):
        await script.call("f")


# JSON-like values the conversions carry unchanged (see docs/scripts.md).
_keys = st.text(max_size=8)
_scalars = (
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**63), max_value=2**63 - 1)
    | st.floats(allow_nan=False)
    | st.text(max_size=20)
)
_values = st.recursive(
    _scalars, lambda inner: st.lists(inner, max_size=5) | st.dictionaries(_keys, inner, max_size=5), max_leaves=25
)


def _normal(value: Any, language: str) -> Any:
    """What a value comes back as: JS turns integral floats within 2**53 into ints."""
    if isinstance(value, float) and language == "js":
        if value.is_integer() and abs(value) <= 2**53 and not (value == 0 and math.copysign(1, value) < 0):
            return int(value)
    if isinstance(value, list):
        return [_normal(v, language) for v in value]
    if isinstance(value, dict):
        return {k: _normal(v, language) for k, v in value.items()}
    return value


def _same(a: Any, b: Any) -> bool:
    if isinstance(a, float) and isinstance(b, float):
        return a == b and math.copysign(1, a) == math.copysign(1, b)
    if type(a) is not type(b):
        return False
    if isinstance(a, list):
        return len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b, strict=True))
    if isinstance(a, dict):
        return a.keys() == b.keys() and all(_same(a[k], b[k]) for k in a)
    return bool(a == b)


@pytest.mark.parametrize("language", LANGS)
def test_round_trips(language: str) -> None:
    async def main() -> None:
        async with CLASSES[language].create() as sb:
            await sb.exec(ECHO[language])

            @settings(max_examples=150, deadline=None, suppress_health_check=list(HealthCheck))
            @given(_values)
            def check(value: Any) -> None:
                got = asyncio.run_coroutine_threadsafe(sb.call("echo", value), loop).result()
                assert _same(got, _normal(value, language)), (value, got)

            loop = asyncio.get_running_loop()
            await asyncio.to_thread(check)

    asyncio.run(main())


# ---- errors ------------------------------------------------------------------------------------------


async def test_js_script_error(js: aionub.JsSandbox) -> None:
    await js.exec("var kept = 41")
    with pytest.raises(aionub.ScriptError) as info:
        await js.exec("function inner() { throw new TypeError('boom') }\nfunction outer() { inner() }\nouter()")
    assert info.value.message == "TypeError: boom"
    assert "at inner" in info.value.stack and "at outer" in info.value.stack
    assert isinstance(info.value, aionub.SandboxError)
    assert not js.poisoned
    assert await js.eval("kept + 1") == 42
    with pytest.raises(aionub.ScriptError, match="SyntaxError"):
        await js.eval("1 +")
    with pytest.raises(aionub.ScriptError, match=r"^42$"):
        await js.eval("throw 42")
    with pytest.raises(aionub.ScriptError, match="nope is not a function"):
        await js.call("nope")
    with pytest.raises(aionub.ScriptError, match="stack overflow"):
        await js.eval("function r() { return r() } r()")
    assert await js.eval("kept") == 41


async def test_lua_script_error(lua: aionub.LuaSandbox) -> None:
    await lua.exec("kept = 41")
    with pytest.raises(aionub.ScriptError) as info:
        await lua.exec("local function inner() error('boom') end\nlocal function outer() inner() end\nouter()")
    assert info.value.message == "exec:1: boom"
    assert info.value.stack.startswith("stack traceback:") and "inner" in info.value.stack
    assert not lua.poisoned and await lua.eval("kept + 1") == 42
    with pytest.raises(aionub.ScriptError, match=r"syntax error|expected"):
        await lua.eval("1 +")
    with pytest.raises(aionub.ScriptError, match=r"error object is a table value"):
        await lua.eval("error({})")
    with pytest.raises(aionub.ScriptError, match=r"attempt to call a nil value \(global 'nope'\)"):
        await lua.call("nope")
    # Lua's stack lives on the heap: it overflows or runs out of memory first.
    with pytest.raises(aionub.ScriptError, match=r"stack overflow|not enough memory"):
        await lua.exec("local function r() return 1 + r() end r()")
    assert await lua.eval("kept") == 41


@pytest.mark.parametrize("language", LANGS)
async def test_infinite_loop_timeout(language: str) -> None:
    loop_code = {"js": "for (;;) {}", "lua": "while true do end"}
    async with CLASSES[language].create() as sb:
        await sb.exec("x = 5")
        snap = await sb.snapshot()
        with pytest.raises(aionub.CallTimeout):
            await sb.exec(loop_code[language], timeout=0.2)
        assert sb.poisoned
        with pytest.raises(aionub.SandboxPoisoned):
            await sb.eval("1")
        await sb.restore(snap)
        assert await sb.eval("x") == 5


@pytest.mark.parametrize("language", LANGS)
async def test_memory_bomb(language: str) -> None:
    bomb = {
        "js": "let a = []; for (;;) a.push(new Array(100000).fill(1.5))",
        "lua": "local t = {} for i = 1, 1e9 do t[i] = string.rep('x', 100000) .. i end",
    }
    async with CLASSES[language].create(memory_size=32 * 1024 * 1024) as sb:
        await sb.exec("y = 7")
        snap = await sb.snapshot()
        with pytest.raises((aionub.ScriptError, aionub.GuestAborted, aionub.GuestFault)) as info:
            await sb.exec(bomb[language], timeout=30)
        if isinstance(info.value, aionub.ScriptError):
            assert "memory" in info.value.message
        await sb.restore(snap)
        assert await sb.eval("y") == 7


# ---- host functions, logs, snapshots ------------------------------------------------------------------


@pytest.mark.parametrize("language", LANGS)
async def test_host_functions(language: str) -> None:
    seen: list[Any] = []

    def price(item: str, qty: int) -> float:
        seen.append((item, qty))
        if item == "bad":
            raise ValueError("no such item")
        return {"apple": 0.5, "pear": 0.75}[item] * qty

    async def lookup(key: str) -> dict[str, Any]:
        await asyncio.sleep(0.01)
        return {"key": key, "tags": ["x", "y"], "blob": b"\x00\x01"}

    code = {
        "js": """
            function total() { return host.price('apple', 2) + host.price('pear', 4) }
            function fetch(k) { return host.lookup(k) }
            function safe() { try { host.price('bad', 1) } catch (e) { return e.message } }
            function missing() { return host.nothing() }
            function unconvertible() { return host.price(() => 1) }
        """,
        "lua": """
            function total() return host.price('apple', 2) + host.price('pear', 4) end
            function fetch(k) return host.lookup(k) end
            function safe() local ok, e = pcall(host.price, 'bad', 1); return e end
            function missing() return host.nothing() end
            function unconvertible() return host.price(print) end
        """,
    }
    async with CLASSES[language].create(host_functions={"price": price, "lookup": lookup}) as sb:
        await sb.exec(code[language])
        assert await sb.call("total") == 4
        blob = b"\x00\x01" if language == "js" else "\x00\x01"  # a Lua string that is UTF-8: str
        assert await sb.call("fetch", "k1") == {"key": "k1", "tags": ["x", "y"], "blob": blob}
        assert (await sb.call("safe")).endswith("ValueError: no such item")
        with pytest.raises(aionub.ScriptError, match="ValueError: no such item"):
            await sb.eval("host.price('bad', 1)")
        with pytest.raises(aionub.ScriptError, match="no host function named 'nothing'"):
            await sb.call("missing")
        with pytest.raises(aionub.ScriptError, match=r"host\.price\(\) argument.*a function cannot be converted"):
            await sb.call("unconvertible")
        assert not sb.poisoned
        assert seen[:2] == [("apple", 2), ("pear", 4)]


def _nested(depth: int) -> Any:
    value: Any = 1
    for _ in range(depth):
        value = [value]
    return value


@pytest.mark.parametrize("language", LANGS)
async def test_host_results_that_cannot_be_sent_are_errors_in_the_script(language: str) -> None:
    async def async_set() -> set[int]:
        await asyncio.sleep(0)
        return {1}

    def raises() -> None:
        raise KeyError("k")

    hosts = {
        "aset": lambda: {1, 2},
        "obj": lambda: {"inner": [object()]},
        "huge_int": lambda: 2**70,
        "deep": lambda: _nested(aionub_scripts.SCRIPT_MAX_DEPTH + 1),
        "deep_ok": lambda: _nested(aionub_scripts.SCRIPT_MAX_DEPTH),
        "big": lambda: "x" * 70_000,
        "async_set": async_set,
        "raises": raises,
        "length": len,
    }
    probe = {
        "js": "function probe(n) { try { host[n]() } catch (e) { return e.name + ': ' + e.message } return 'none' }",
        "lua": "function probe(n) local ok, e = pcall(host[n]); if ok then return 'none' end return e end",
    }
    async with CLASSES[language].create(host_functions=hosts, output_size=64 * 1024) as sb:
        await sb.exec(probe[language])
        caught = {name: await sb.call("probe", name) for name in hosts if name not in {"deep_ok", "length"}}
        prefix = "HostError: " if language == "js" else ""
        expected = {
            "aset": "TypeError: the result of host.aset(): cannot pass a value of type set",
            "obj": "TypeError: the result of host.obj()['inner'][0]: cannot pass a value of type object",
            "huge_int": "OverflowError: the result of host.huge_int(): 1180591620717411303424 does not fit",
            "deep": "ValueError: the result of host.deep()" + "[0]" * 60 + ": lists and dicts nest deeper than 60",
            "big": "ValueError: the result of host.big() takes 70006 bytes encoded, more than the 65536-byte",
            "async_set": "TypeError: the result of host.async_set(): cannot pass a value of type set",
            "raises": "KeyError: 'k'",
        }
        for name, text in expected.items():
            assert prefix + text in caught[name], (name, caught[name])
        # Uncaught, it is the call's ScriptError, and the sandbox goes on.
        with pytest.raises(aionub.ScriptError, match=r"the result of host\.aset\(\): cannot pass a value of type set"):
            await sb.eval("host.aset()")
        assert not sb.poisoned
        assert await sb.eval("host.deep_ok()") == _nested(aionub_scripts.SCRIPT_MAX_DEPTH)
        assert await sb.eval("1 + 1") == 2
        # Arguments that do not fit in the output buffer never reach the host.
        big = {"js": "host.length('x'.repeat(70000))", "lua": "host.length(string.rep('x', 70000))"}
        with pytest.raises(aionub.ScriptError, match=r"host\.length\(\): .*do not fit in the output buffer"):
            await sb.eval(big[language])
        assert await sb.eval("host.length('abc')") == 3


def test_script_host_functions_checks_output_size() -> None:
    with pytest.raises(TypeError, match="output_size must be an int, not str"):
        aionub.script_host_functions({}, output_size="1")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="output_size must be positive, not 0"):
        aionub.script_host_functions({}, output_size=0)


async def test_script_host_checks_what_the_runtime_sends() -> None:
    # script.host is an ordinary host function: a C guest can call it with anything.
    dispatch = aionub.script_host_functions({"f": lambda: 1})["script.host"]
    assert dispatch("f") == [False, "script.host takes (name: str, args: list), not 1 arguments"]
    assert dispatch(1, []) == [False, "script.host takes (name: str, args: list), not 2 arguments"]
    assert dispatch("f", [])[0] is True


# ---- JavaScript promises --------------------------------------------------------------------------------


async def test_js_promise_results_are_awaited(js: aionub.JsSandbox) -> None:
    assert await js.eval("Promise.resolve(5)") == 5
    assert await js.eval("Promise.resolve(1).then(x => x + 1).then(x => [x, 'two'])") == [2, "two"]
    await js.exec("async function twice(x) { await null; await null; return {x: x * 2} }")
    assert await js.call("twice", 21) == {"x": 42}
    assert await js.eval("new Promise(resolve => Promise.resolve().then(() => resolve('late')))") == "late"
    # exec waits for a promise too, so an async main's effects are done.
    await js.exec("(async () => { await null; globalThis.finished = true })()")
    assert await js.eval("finished") is True
    # The settled value is converted as any result is.
    with pytest.raises(aionub.ScriptError, match=r"^result\.f: a function cannot be converted$"):
        await js.eval("Promise.resolve({f() {}})")
    # QuickJS 2021-03-27 has no top-level await.
    with pytest.raises(aionub.ScriptError, match="SyntaxError"):
        await js.eval("await Promise.resolve(1)")


async def test_js_rejections_are_script_errors(js: aionub.JsSandbox) -> None:
    with pytest.raises(aionub.ScriptError) as info:
        await js.eval("Promise.reject(new TypeError('nope'))")
    assert info.value.message == "TypeError: nope" and "<eval>" in info.value.stack
    await js.exec("async function deep() { await null; throw new RangeError('too far') }")
    with pytest.raises(aionub.ScriptError) as info:
        await js.call("deep")
    assert info.value.message == "RangeError: too far" and "at deep" in info.value.stack
    with pytest.raises(aionub.ScriptError) as info:
        await js.eval("Promise.reject(42)")
    assert info.value.message == "42" and info.value.stack == ""
    with pytest.raises(aionub.ScriptError, match="in exec"):
        await js.exec("Promise.reject(new Error('in exec'))")
    assert not js.poisoned and await js.eval("1") == 1


async def test_js_proxy_traps_that_throw_are_script_errors(js: aionub.JsSandbox) -> None:
    # Asking whether a value is a Promise or a Uint8Array runs a Proxy's
    # getPrototypeOf trap: its exception is the call's, not swallowed.
    trap = "new Proxy({}, {getPrototypeOf() { throw new Error('trap ' + where) }})"
    await js.exec("var where = 'top'")
    with pytest.raises(aionub.ScriptError, match=r"^Error: trap top$"):
        await js.eval(trap)
    await js.exec("where = 'nested'")
    with pytest.raises(aionub.ScriptError, match=r"^Error: trap nested$"):
        await js.eval(f"[1, {{inner: {trap}}}]")
    assert await js.eval("[new Uint8Array([1, 2]), 'ok']") == [b"\x01\x02", "ok"]


async def test_js_a_promise_that_never_settles(js: aionub.JsSandbox) -> None:
    await js.exec("var resolveLater; var waiting = new Promise(r => { resolveLater = r })")
    with pytest.raises(aionub.ScriptError, match="the promise never settled"):
        await js.eval("waiting")
    with pytest.raises(aionub.ScriptError, match="the promise never settled"):
        await js.eval("(async () => { await new Promise(() => {}); return 1 })()")
    assert not js.poisoned
    # Settled by a later call, the same promise is a value.
    assert await js.eval("resolveLater(7); waiting") == 7


async def test_js_endless_jobs_are_stopped_by_the_timeout(js: aionub.JsSandbox) -> None:
    snap = await js.snapshot()
    with pytest.raises(aionub.CallTimeout):
        await js.exec("function spin() { return Promise.resolve().then(spin) } spin()", timeout=0.3)
    assert js.poisoned
    await js.restore(snap)
    assert await js.eval("Promise.resolve(3)") == 3


async def test_js_awaiting_host_functions() -> None:
    async def price(item: str) -> float:
        await asyncio.sleep(0.001)
        if item == "bad":
            raise LookupError(item)
        return {"apple": 0.5, "pear": 0.75}[item]

    code = """
        async function total(items) { let sum = 0; for (const i of items) sum += await host.price(i); return sum }
        async function careful(item) {
            try { return await host.price(item) } catch (e) { return e.name + ': ' + e.message }
        }
    """
    async with aionub.JsSandbox.create(host_functions={"price": price}) as js:
        await js.exec(code)
        assert await js.call("total", ["apple", "pear", "pear"]) == 2
        assert await js.call("careful", "bad") == "HostError: LookupError: bad"
        with pytest.raises(aionub.ScriptError, match=r"^HostError: LookupError: bad$"):
            await js.call("total", ["apple", "bad"])
        assert not js.poisoned


async def test_js_unhandled_rejections_are_logged(js: aionub.JsSandbox, caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING, logger="aionub.guest"):
        assert await js.eval("Promise.reject(new Error('lost')); 1") == 1
        assert await js.eval("var p = Promise.reject(new Error('caught later')); p.catch(() => {}); 2") == 2
        assert await js.eval("for (let i = 0; i < 20; i++) Promise.reject(i); 3") == 3
        # A reason whose toString rejects and handles other promises: those
        # are the next call's to report, and nothing is freed twice.
        assert await js.eval("""
            var early = Promise.reject(new Error('early'))
            Promise.reject({toString() {
                early.catch(() => {})
                Promise.reject('from toString')
                return 'odd reason'
            }})
            4
        """) == 4
        assert await js.eval("5") == 5
    messages = [r.getMessage().split("] ", 1)[1] for r in caplog.records if r.name == "aionub.guest"]
    assert messages[0] == "unhandled promise rejection: Error: lost"
    assert messages[1:10] == [f"unhandled promise rejection: {i}" for i in range(8)] + [
        "12 more unhandled promise rejections"
    ]
    assert messages[10:] == [
        "unhandled promise rejection: Error: early",
        "unhandled promise rejection: odd reason",
        "unhandled promise rejection: from toString",
    ]


@pytest.mark.parametrize("language", LANGS)
async def test_print_goes_to_the_log(language: str, caplog: pytest.LogCaptureFixture) -> None:
    code = {
        "js": "print('hello', 42, {a: [1]}); console.warn('careful'); console.log('x')",
        "lua": "print('hello', 42, nil)",
    }
    async with CLASSES[language].create() as sb:
        with caplog.at_level(logging.DEBUG, logger="aionub.guest"):
            await sb.exec(code[language])
    messages = [(r.levelno, r.getMessage().split("] ", 1)[1]) for r in caplog.records if r.name == "aionub.guest"]
    if language == "js":
        assert messages == [(20, 'hello 42 {"a":[1]}'), (30, "careful"), (20, "x")]
    else:
        assert messages == [(20, "hello\t42\tnil")]


@pytest.mark.parametrize("language", LANGS)
async def test_snapshot_after_loading_a_script(language: str) -> None:
    code = {
        "js": "var n = 0; function bump() { return ++n }",
        "lua": "n = 0; function bump() n = n + 1; return n end",
    }
    async with CLASSES[language].create() as sb:
        await sb.exec(code[language])
        snap = await sb.snapshot()
        assert [await sb.call("bump") for _ in range(3)] == [1, 2, 3]
        await sb.restore(snap)
        assert await sb.call("bump") == 1


@pytest.mark.parametrize("language", LANGS)
async def test_pool_with_setup(language: str) -> None:
    code = {
        "js": "var n = 0; function bump(k) { n += k; return host.twice(n) }",
        "lua": "n = 0; function bump(k) n = n + k; return host.twice(n) end",
    }
    cls = CLASSES[language]
    async with cls.pool(setup=code[language], host_functions={"twice": lambda x: 2 * x}, size=2) as pool:
        for _ in range(3):
            async with pool.acquire() as sandbox:
                sb = cls(sandbox)
                assert await sb.call("bump", 5) == 10  # every checkout starts from the setup's state
                assert await sb.call("bump", 1) == 12
    with pytest.raises(TypeError, match="does not run the"):
        async with aionub.Sandbox.create(aionub.DEMO_GUEST) as demo:
            cls(demo)


# ---- the CLI ------------------------------------------------------------------------------------------------


def _cli(*args: str, stdin: str = "") -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "aionub", *args], input=stdin, capture_output=True, text=True, timeout=60
    )


def test_cli(tmp_path: Any) -> None:
    out = _cli("js", "-e", "({a: [1, 2.5, 'x', null], b: new Uint8Array([104, 105])})")
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout) == {"a": [1, 2.5, "x", None], "b": {"base64": "aGk="}}
    script = tmp_path / "s.lua"
    script.write_text("local t = {}\nfor i = 1, 3 do t[i] = i * i end\nprint('log line')\nreturn t\n")
    out = _cli("lua", str(script))
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout) == [1, 4, 9]
    assert "log line" in out.stderr
    out = _cli("js", "-e", "throw new Error('bad\\nthing')")
    assert out.returncode == 1
    assert out.stderr.strip().splitlines()[-1] == "aionub js: ScriptError: Error: bad thing"
    out = _cli("lua", "-e", "while true do end", "--timeout", "0.2")
    assert out.returncode == 1 and "CallTimeout" in out.stderr
    out = _cli("js", "-", stdin="6 * 7")
    assert (out.returncode, out.stdout.strip()) == (0, "42")
