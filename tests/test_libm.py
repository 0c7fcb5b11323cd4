"""The guest's libm, strtod and printf against the host's, in bulk.

sin cos tan exp log pow atan2 run in the guest (musl) on 10^5 random inputs
each (fixed seed), and are compared with the host's glibc libm, called
directly through ctypes (no Python error handling in between): every result
must be within 1 ulp, NaN where glibc gives NaN. strtod must be exact against
Python's float() (both round correctly), including decimal strings halfway
between two doubles, and printf("%.17g") must print what Python's '%.17g'
prints (and read back to the same double). The largest ulp difference seen
for each function is printed."""

from __future__ import annotations

import ctypes
import ctypes.util
import math
import random
import struct
import sys
from array import array
from collections.abc import AsyncIterator, Callable, Iterator
from decimal import Context, Decimal, localcontext
from pathlib import Path

import pytest
from guestbuild import LIBC_MISSING, build_cached, sdk_has_libc

import aionub

pytestmark = [
    pytest.mark.anyio,
    pytest.mark.skipif(not sdk_has_libc(), reason=LIBC_MISSING),
    pytest.mark.timeout(300),
]

SEED = 20261202
N = 100_000
CHUNK = 8192  # values per call: 8192 * 48 bytes of formatted text fits the output buffer
IO_SIZE = 512 * 1024
DRIVER = Path(__file__).resolve().parent / "thirdparty" / "libm_driver.c"

_libm = ctypes.CDLL(ctypes.util.find_library("m") or "libm.so.6")
HOST: dict[str, Callable[..., float]] = {}
for _name, _arity in (("sin", 1), ("cos", 1), ("tan", 1), ("exp", 1), ("log", 1), ("pow", 2), ("atan2", 2)):
    _fn = getattr(_libm, _name)
    _fn.restype = ctypes.c_double
    _fn.argtypes = [ctypes.c_double] * _arity
    HOST[_name] = _fn


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture(scope="module")
def libm_guest() -> Path:
    return build_cached("libm", [DRIVER])


@pytest.fixture
async def sb(libm_guest: Path) -> AsyncIterator[aionub.Sandbox]:
    async with aionub.Sandbox.create(
        libm_guest, memory_size=32 * 1024 * 1024, input_size=IO_SIZE, output_size=IO_SIZE
    ) as sandbox:
        yield sandbox


# ---- inputs ----------------------------------------------------------------------------

SPECIALS = [0.0, -0.0, math.inf, -math.inf, math.nan, 5e-324, -5e-324, 2.2250738585072014e-308, 1e-310,
            sys.float_info.max, -sys.float_info.max, 1.0, -1.0, 0.5, 2.0, math.pi, -math.pi, math.pi / 2,
            math.pi / 4, 1e-300, 1e300, 709.782712893384, -745.1332191019412, 1e22, 2.0**1023]  # fmt: skip


def _bits(rng: random.Random, lo_exp: int = -1074, hi_exp: int = 1023) -> float:
    """A random finite double: random mantissa, sign and binary exponent."""
    while True:
        x = math.ldexp(rng.random() + 0.5, rng.randint(lo_exp, hi_exp)) * rng.choice((1, -1))
        if math.isfinite(x):
            return x


def _mix(rng: random.Random, parts: list[tuple[float, Callable[[], float]]]) -> list[float]:
    out = list(SPECIALS)
    weights = [w for w, _ in parts]
    gens = [g for _, g in parts]
    while len(out) < N:
        out.append(rng.choices(gens, weights)[0]())
    return out


def unary_inputs(name: str) -> list[float]:
    rng = random.Random(f"{SEED}-{name}")
    u = rng.uniform
    if name in ("sin", "cos", "tan"):
        return _mix(rng, [(6, lambda: u(-2 * math.pi, 2 * math.pi)), (2, lambda: u(-1e5, 1e5)),
                          (1, lambda: _bits(rng, -60, 1023)), (1, lambda: _bits(rng, -1074, 0))])  # fmt: skip
    if name == "exp":
        return _mix(rng, [(6, lambda: u(-745, 709.8)), (2, lambda: u(-1, 1)), (2, lambda: _bits(rng, -80, 12))])
    if name == "log":
        return _mix(rng, [(4, lambda: math.exp(u(-700, 700))), (3, lambda: u(0.5, 2)),
                          (3, lambda: abs(_bits(rng)))])  # fmt: skip
    raise ValueError(name)


def binary_inputs(name: str) -> list[tuple[float, float]]:
    rng = random.Random(f"{SEED}-{name}")
    u = rng.uniform
    pairs = [(a, b) for a in SPECIALS[:12] for b in SPECIALS[:12]]
    while len(pairs) < N:
        k = rng.random()
        if name == "pow":
            if k < 0.4:
                pairs.append((u(0, 100), u(-50, 50)))
            elif k < 0.7:
                pairs.append((u(0.5, 2), u(-1000, 1000)))
            elif k < 0.85:
                pairs.append((u(-100, 100), float(rng.randint(-60, 60))))
            else:
                pairs.append((abs(_bits(rng)), u(-2, 2)))
        else:
            pairs.append((u(-1e3, 1e3), u(-1e3, 1e3)) if k < 0.7 else (_bits(rng), _bits(rng)))
    return pairs


# ---- comparing -----------------------------------------------------------------------------


def _ordered(x: float) -> int:
    """Doubles mapped to integers in the same order, adjacent doubles 1 apart."""
    i: int = struct.unpack("<q", struct.pack("<d", x))[0]
    return i if i >= 0 else -(i & 0x7FFF_FFFF_FFFF_FFFF)


def ulps(a: float, b: float) -> int:
    if math.isnan(a) or math.isnan(b):
        return 0 if math.isnan(a) and math.isnan(b) else 1 << 62
    return abs(_ordered(a) - _ordered(b))


def _chunks(values: array[float], width: int = 1) -> Iterator[bytes]:
    step = CHUNK * width
    for i in range(0, len(values), step):
        yield values[i : i + step].tobytes()


def _report(what: str, worst: int, count: int, off: int, against: str = "glibc") -> None:
    print(f"\n{what}: max {worst} ulp over {count} inputs ({off} differ from {against})", file=sys.stderr)


def _check(name: str, args: list[tuple[float, ...]], got: array[float], host: Callable[..., float]) -> None:
    assert len(got) == len(args)
    worst, worst_at, off = 0, 0, 0
    for i, (a, y) in enumerate(zip(args, got, strict=True)):
        d = ulps(y, host(*a))
        if d:
            off += 1
            if d > worst:
                worst, worst_at = d, i
    _report(name, worst, len(args), off)
    a = args[worst_at]
    assert worst <= 1, f"{name}{a}: guest {got[worst_at]!r}, glibc {host(*a)!r} ({worst} ulp)"


@pytest.mark.parametrize("name", ["sin", "cos", "tan", "exp", "log"])
async def test_unary_within_1_ulp_of_glibc(sb: aionub.Sandbox, name: str) -> None:
    xs = array("d", unary_inputs(name))
    got = array("d")
    for chunk in _chunks(xs):
        got.frombytes(await sb.call("unary", name, chunk))
    _check(name, [(x,) for x in xs], got, HOST[name])


@pytest.mark.parametrize("name", ["pow", "atan2"])
async def test_binary_within_1_ulp_of_glibc(sb: aionub.Sandbox, name: str) -> None:
    pairs = binary_inputs(name)
    flat = array("d", [v for p in pairs for v in p])
    got = array("d")
    for chunk in _chunks(flat, 2):
        got.frombytes(await sb.call("binary", name, chunk))
    _check(name, pairs, got, HOST[name])


# ---- strtod and printf ------------------------------------------------------------------------


def decimal_strings() -> list[str]:
    """Numbers as C and Python both read them: shortest reprs, %.17g, long
    random decimals, and exact midpoints between adjacent doubles (a correctly
    rounding strtod must round those to even)."""
    rng = random.Random(f"{SEED}-strtod")
    out = ["0", "-0", "0.0", "1", "-1", "5e-324", "2.4703282292062327e-324", "2.4703282292062328e-324",
           "1.7976931348623157e308", "1.7976931348623158e308", "2.2250738585072011e-308", "1e23",
           "9007199254740993", "0.1", ".5", "5.", "1E+10", "1e-400", "-1e-400", "1e400", "-1e400",
           "infinity", "-INF", "00000.000001000", "123456789012345678901234567890"]  # fmt: skip
    while len(out) < N:
        k = rng.random()
        if k < 0.3:
            out.append(repr(_bits(rng)))
        elif k < 0.5:
            out.append(format(_bits(rng), ".17g"))
        elif k < 0.8:
            digits = "".join(rng.choice("0123456789") for _ in range(rng.randint(1, 30)))
            point = rng.randint(0, len(digits))
            out.append(f"{rng.choice(['', '-'])}{digits[:point]}.{digits[point:]}e{rng.randint(-340, 310)}")
        else:
            x = abs(_bits(rng, -1074, 1022))
            with localcontext(Context(prec=1200)):  # exact: a midpoint has up to ~770 digits
                mid = (Decimal(x) + Decimal(math.nextafter(x, math.inf))) / 2
            text = format(mid, "f")
            out.append(text if len(text) < 80 else format(mid, "e"))
    return out


async def test_strtod_matches_python_float(sb: aionub.Sandbox) -> None:
    strings = decimal_strings()
    expected = array("d", [float(s) for s in strings])
    got = array("d")
    blob = bytearray()
    for s in strings:  # midpoints run to hundreds of digits: batch by size, not count
        blob += s.encode() + b"\0"
        if len(blob) > IO_SIZE // 2 or s is strings[-1]:
            got.frombytes(await sb.call("parse", bytes(blob)))
            blob.clear()
    assert len(got) == len(strings)
    bad = [(s, g, e) for s, g, e in zip(strings, got, expected, strict=True) if ulps(g, e) != 0]
    _report("strtod", max((ulps(g, e) for _, g, e in bad), default=0), len(strings), len(bad), "Python's float()")
    assert bad == []


async def test_printf_17g_round_trips(sb: aionub.Sandbox) -> None:
    rng = random.Random(f"{SEED}-printf")
    xs = array("d", [x for x in SPECIALS if math.isfinite(x)])
    while len(xs) < N:
        xs.append(_bits(rng) if rng.random() < 0.7 else rng.uniform(-1e6, 1e6))
    got: list[str] = []
    for chunk in _chunks(xs):
        got += (await sb.call("format", "%.17g", chunk)).decode().split("\0")[:-1]
    assert len(got) == len(xs)
    mismatched = [(x, s) for x, s in zip(xs, got, strict=True) if s != format(x, ".17g") or float(s) != x]
    _report("printf %.17g", 0 if not mismatched else 1, len(xs), len(mismatched), "Python's '%.17g'")
    assert mismatched[:5] == []


@pytest.mark.parametrize("fmt", ["%.3f", "%e", "%g", "%a", "%.0f", "%+.10e"])
async def test_printf_formats_match_python(sb: aionub.Sandbox, fmt: str) -> None:
    rng = random.Random(f"{SEED}-{fmt}")
    xs = array("d", [0.0, -0.0, 0.5, 1.5, 2.5, -2.5, 1e-5, 123456.789, 1e21, 5e-324, *(
        _bits(rng, -40, 60) for _ in range(2000))])  # fmt: skip
    out = (await sb.call("format", fmt, xs.tobytes())).decode().split("\0")[:-1]
    if fmt == "%a":  # glibc and musl agree on %a; Python has no %a: compare the value
        assert [float.fromhex(s) for s in out] == list(xs)
    else:
        assert out == [fmt % x for x in xs]
