"""Third-party C libraries built unmodified as guests: zlib, Lua 5.4, QuickJS
and SQLite, each with a small driver of ours (tests/thirdparty/). Their
sources come from aionub._sources (pinned, hash-checked, cached); each guest
is compiled once into the aionub cache (tests/guestbuild.py)."""

from __future__ import annotations

import random
import zlib
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from guestbuild import LIBC_MISSING, build_cached, sdk_has_libc

import aionub
from aionub import _sources

pytestmark = [
    pytest.mark.anyio,
    pytest.mark.skipif(not sdk_has_libc(), reason=LIBC_MISSING),
    pytest.mark.timeout(600),  # a first build of SQLite or QuickJS takes a minute on 2 cores
]

DRIVERS = Path(__file__).resolve().parent / "thirdparty"
BIG = {"memory_size": 64 * 1024 * 1024}


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"  # the guests are the subject here, not the event loops


def _text(value: str | bytes) -> str:
    return value.decode() if isinstance(value, bytes) else value


# ---- builds --------------------------------------------------------------------------


def zlib_guest() -> Path:
    root = _sources.fetch("zlib")
    units = ["adler32", "compress", "crc32", "deflate", "infback", "inffast", "inflate", "inftrees", "trees",
             "uncompr", "zutil"]  # fmt: skip
    return build_cached("zlib", [DRIVERS / "zlib_driver.c", *(root / f"{u}.c" for u in units)], include_dirs=[root])


def lua_guest() -> Path:
    root = _sources.fetch("lua54")
    # Lua's core and standard library: every .c but the two programs, the
    # single-file build (onelua.c includes all the others) and the test harness.
    units = sorted(p for p in root.glob("*.c") if p.name not in {"lua.c", "luac.c", "onelua.c", "ltests.c"})
    return build_cached("lua54", [DRIVERS / "lua_driver.c", *units], include_dirs=[root])


def quickjs_guest() -> Path:
    root = _sources.fetch("quickjs")
    version = (root / "VERSION").read_text().strip()
    units = [root / f"{u}.c" for u in ("quickjs", "libregexp", "libunicode", "cutils", "libbf")]
    cflags = ["-D_GNU_SOURCE", f'-DCONFIG_VERSION="{version}"', "-DCONFIG_BIGNUM"]
    return build_cached("quickjs", [DRIVERS / "quickjs_driver.c", *units], cflags=cflags, include_dirs=[root])


def sqlite_guest() -> Path:
    root = _sources.fetch("sqlite")
    cflags = ["-DSQLITE_THREADSAFE=0", "-DSQLITE_OMIT_LOAD_EXTENSION", "-DSQLITE_ENABLE_MATH_FUNCTIONS"]
    return build_cached("sqlite", [DRIVERS / "sqlite_driver.c", root / "sqlite3.c"], cflags=cflags, include_dirs=[root])


@pytest.fixture(scope="session")
def guests() -> dict[str, Path]:
    """Lazily built guests, shared by the whole session."""
    return {}


def _guest(guests: dict[str, Path], name: str) -> Path:
    if name not in guests:
        guests[name] = {"zlib": zlib_guest, "lua": lua_guest, "quickjs": quickjs_guest, "sqlite": sqlite_guest}[name]()
    return guests[name]


@pytest.fixture
async def zlib_sb(guests: dict[str, Path]) -> AsyncIterator[aionub.Sandbox]:
    async with aionub.Sandbox.create(_guest(guests, "zlib"), **BIG) as sb:
        yield sb


@pytest.fixture
async def lua_sb(guests: dict[str, Path]) -> AsyncIterator[aionub.Sandbox]:
    async with aionub.Sandbox.create(_guest(guests, "lua"), **BIG) as sb:
        yield sb


@pytest.fixture
async def js_sb(guests: dict[str, Path]) -> AsyncIterator[aionub.Sandbox]:
    async with aionub.Sandbox.create(_guest(guests, "quickjs"), **BIG) as sb:
        yield sb


@pytest.fixture
async def sql_sb(guests: dict[str, Path]) -> AsyncIterator[aionub.Sandbox]:
    async with aionub.Sandbox.create(_guest(guests, "sqlite"), **BIG) as sb:
        yield sb


# ---- zlib ------------------------------------------------------------------------------


def _corpus() -> list[bytes]:
    rng = random.Random(1234)
    words = [b"sandbox", b"guest", b"host", b"vCPU", b"page", b"\x00\x01", b"musl"]
    return [
        b"",
        b"a",
        b"hello, world\n" * 1000,
        bytes(rng.getrandbits(8) for _ in range(20_000)),  # incompressible
        b" ".join(rng.choice(words) for _ in range(8_000)),
        bytes(range(256)) * 100,
    ]


async def test_zlib_round_trip_in_the_guest(zlib_sb: aionub.Sandbox) -> None:
    assert await zlib_sb.call("version") == "1.2.13"
    for data in _corpus():
        for level in (0, 1, 6, 9):
            assert await zlib_sb.call("roundtrip", data, level) == data


async def test_zlib_agrees_with_the_host(zlib_sb: aionub.Sandbox) -> None:
    same_zlib = zlib.ZLIB_RUNTIME_VERSION == await zlib_sb.call("version")
    for data in _corpus():
        assert await zlib_sb.call("crc", data) == zlib.crc32(data)
        packed = await zlib_sb.call("compress", data, 9)
        assert zlib.decompress(packed) == data
        if same_zlib:  # the same zlib on both sides compresses to the same bytes
            assert packed == zlib.compress(data, 9)
        assert await zlib_sb.call("uncompress", zlib.compress(data, 6), len(data)) == data


async def test_zlib_corrupt_input_aborts(zlib_sb: aionub.Sandbox) -> None:
    with pytest.raises(aionub.GuestAborted) as info:
        await zlib_sb.call("uncompress", b"not zlib data at all", 100)
    assert info.value.code == -3  # Z_DATA_ERROR
    assert "uncompress: data error" in info.value.message


# ---- Lua ---------------------------------------------------------------------------------


async def test_lua_evaluates_scripts(lua_sb: aionub.Sandbox) -> None:
    ev = lua_sb.call
    assert await ev("eval", "return 6 * 7") == "42"
    assert await ev("eval", "x = 5") == ""
    assert await ev("eval", "return x + 1") == "6"  # one state across calls
    assert await ev("eval", "local t = {5, 3, 9, 1}; table.sort(t); return table.concat(t, ',')") == "1,3,5,9"
    assert await ev("eval", "return string.format('%5.2f|%g|%.17g', math.pi, 1e300 * 10, 0.1)") == (
        " 3.14|1e+301|0.10000000000000001"
    )
    assert await ev("eval", "return ('%d'):format(3) .. utf8.char(233)") == "3é"
    assert await ev("eval", "return math.floor(math.sin(1) * 1e6)") == "841470"
    assert await ev("eval", "return tostring(2^53 + 1 == 2^53)") == "true"
    assert await ev("eval", "return string.rep('ab', 3, '-'):upper():gsub('B', 'b')") == "Ab-Ab-Ab"
    assert await ev("eval", "return tonumber('0x1p-2') + tonumber('  1e2 ')") == "100.25"
    script = """
        local co = coroutine.wrap(function(a) local b = coroutine.yield(a + 1); return b * 2 end)
        return co(1) + co(10)
    """
    assert await ev("eval", script) == "22"
    assert await ev("eval", "error('boom')") == "error: [string \"error('boom')\"]:1: boom"
    assert await ev("eval", "return x") == "5"  # an error leaves the state usable


async def test_lua_garbage_and_big_strings(lua_sb: aionub.Sandbox) -> None:
    script = """
        local parts = {}
        for i = 1, 20000 do parts[#parts + 1] = tostring(i * 1.5) end
        local s = table.concat(parts, ',')
        collectgarbage()
        return #s .. ' ' .. s:sub(1, 11)
    """
    assert await lua_sb.call("eval", script) == "152595 1.5,3.0,4.5"


async def test_lua_main_with_stdin(guests: dict[str, Path]) -> None:
    async with aionub.Sandbox.create(_guest(guests, "lua"), **BIG) as sb:
        res = await sb.run(["lua", "a1"], stdin=b"print('hi', 1 + 1, arg[0], arg[1]) io.write('x')")
        assert res.returncode == 0
        assert _text(res.stdout) == "hi\t2\tlua\ta1\nx"
        assert _text(res.stderr) == ""
    async with aionub.Sandbox.create(_guest(guests, "lua"), **BIG) as sb:
        res = await sb.run(["lua"], stdin=b"io.write('partial') os.exit(3)")
        assert (res.returncode, _text(res.stdout)) == (3, "partial")
    async with aionub.Sandbox.create(_guest(guests, "lua"), **BIG) as sb:
        res = await sb.run(["lua"], stdin=b"error('bad')")
        assert res.returncode == 1
        assert _text(res.stderr) == "lua: stdin:1: bad\n"


# ---- QuickJS -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("code", "expected"),
    [
        ("1 + 2", "3"),
        ("JSON.stringify({a: [1, 2, {b: 'x'}]})", '{"a":[1,2,{"b":"x"}]}'),
        ("'a1b22c333'.replace(/\\d+/g, m => m.length)", "a1b2c3"),
        ("Math.sqrt(2)", "1.4142135623730951"),
        ("(0.1 + 0.2).toString()", "0.30000000000000004"),
        ("(123.456).toFixed(1) + ' ' + (1e21).toString() + ' ' + parseFloat('1e-7')", "123.5 1e+21 1e-7"),
        ("(2n ** 100n).toString()", "1267650600228229401496703205376"),
        ("'straße'.toUpperCase()", "STRASSE"),
        ("[3, 1, 2].sort().join()", "1,2,3"),
        ("function f(n) { return n < 2 ? n : f(n - 1) + f(n - 2) } f(20)", "6765"),
        ("throw new Error('boom')", "error: Error: boom"),
        ("function r(n) { return r(n + 1) } r(0)", "error: InternalError: stack overflow"),
        ("new Map([[1, 'a'], [2, 'b']]).get(2) + [...new Set('hello')].join('')", "bhelo"),
        ("Math.round(Math.exp(1) * 1e12) + ' ' + Math.atan2(1, 1) * 4", "2718281828459 3.141592653589793"),
    ],
)
async def test_quickjs_evaluates_scripts(js_sb: aionub.Sandbox, code: str, expected: str) -> None:
    assert await js_sb.call("eval", code) == expected


async def test_quickjs_context_persists(js_sb: aionub.Sandbox) -> None:
    assert await js_sb.call("eval", "var total = 0; for (let i = 0; i < 1e5; i++) total += i; total") == "4999950000"
    assert await js_sb.call("eval", "total / 2") == "2499975000"
    assert await js_sb.call("eval", "undefinedName") == "error: ReferenceError: 'undefinedName' is not defined"
    assert await js_sb.call("eval", "typeof total") == "number"


# ---- SQLite --------------------------------------------------------------------------------


async def test_sqlite_in_memory_queries(sql_sb: aionub.Sandbox) -> None:
    ex = sql_sb.call
    assert await ex("version") == "3.53.2"
    setup = """
        create table t(id integer primary key, name text, score real);
        with recursive c(i) as (select 1 union all select i + 1 from c where i < 1000)
        insert into t(name, score) select 'n' || i, i * 0.5 from c;
    """
    assert await ex("exec", setup) == ""
    assert await ex("exec", "select count(*), sum(score), avg(score), min(name), max(name) from t") == (
        "1000|250250.0|250.25|n1|n999\n"
    )
    assert await ex("exec", "select name, score from t where id % 250 = 0 order by score desc") == (
        "n1000|500.0\nn750|375.0\nn500|250.0\nn250|125.0\n"
    )
    assert await ex("exec", "select id % 3 as k, count(*), round(avg(score), 2) from t group by k order by k") == (
        "0|333|250.5\n1|334|250.25\n2|333|250.0\n"
    )
    assert await ex("exec", "select upper('abc') || lower('XYZ'), substr('sandbox', 2, 3), 'aionub' like 'AIO%'") == (
        "ABCxyz|and|1\n"
    )
    assert await ex("exec", "select json_object('a', 1, 'b', json_array(1.5, 'x'))") == '{"a":1,"b":[1.5,"x"]}\n'
    assert await ex("exec", "select 1.0 / 3, printf('%.3f|%08.2f|%e', 3.14159265, -3.14159, 1e100)") == (
        "0.33333333333333332|3.142|-0003.14|1.000000e+100\n"
    )
    assert await ex("exec", "select round(sin(1), 12), round(exp(1), 12), round(power(2, 0.5), 12)") == (
        "0.841470984808|2.718281828459|1.414213562373\n"
    )
    assert await ex("exec", "select * from nope") == "error: no such table: nope"
    assert await ex("exec", "select typeof(x'00ff'), hex(zeroblob(2)), cast('12.5abc' as real)") == "blob|0000|12.5\n"


async def test_sqlite_index_and_join(sql_sb: aionub.Sandbox) -> None:
    rng = random.Random(7)
    rows = [(i, rng.randrange(100)) for i in range(2000)]
    values = ",".join(f"({i},{k})" for i, k in rows)
    await sql_sb.call("exec", f"create table a(id integer primary key, k int); insert into a values {values};")
    await sql_sb.call("exec", "create index a_k on a(k); create table b as select distinct k, k * k as sq from a;")
    query = "select a.k, count(*), max(b.sq) from a join b using (k) group by a.k order by 2 desc, 1 limit 3"
    got = await sql_sb.call("exec", query)
    counts: dict[int, int] = {}
    for _, k in rows:
        counts[k] = counts.get(k, 0) + 1
    top = sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))[:3]
    assert got == "".join(f"{k}|{n}|{k * k}\n" for k, n in top)
    assert "a_k" in await sql_sb.call("exec", "explain query plan select * from a where k = 5")

