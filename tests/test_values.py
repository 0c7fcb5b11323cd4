"""Structured values in real sandboxes (tests/values/values.c): lists, dicts
and ``any`` through calls, results and host functions; the runtime's
ownership rule, checked for leaks with a bounded heap; invalid results and
forged records from the guest; and the guest's own decoder (two passes into
one block) fuzzed against the host's.

The hypothesis tests drive one sandbox from a loop of their own (a
module-scoped ``asyncio`` loop), so a few hundred examples cost a few hundred
calls, not a few hundred sandboxes."""

from __future__ import annotations

import asyncio
import math
import struct
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings, strategies as st

import aionub
from aionub import _abi
from aionub._exceptions import GuestProtocolError
from aionub._wire import Reader, encode_string, encode_value

HERE = Path(__file__).resolve().parent
RUNTIME = HERE.parent / "native" / "guest" / "runtime"

SETTINGS = settings(
    max_examples=150,
    deadline=None,
    derandomize=True,
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large, HealthCheck.function_scoped_fixture],
)


@pytest.fixture(scope="module")
def guest(tmp_path_factory: pytest.TempPathFactory) -> Path:
    if not RUNTIME.is_dir():
        pytest.skip("needs the repository's native/guest/runtime (the test guest uses its private header)")
    out = tmp_path_factory.mktemp("values") / "values.elf"
    return aionub.build_guest([HERE / "values" / "values.c"], out, include_dirs=[RUNTIME])


async def host_echo(x: Any) -> Any:
    return x


def host_make(nums: list[Any], opts: dict[str, Any]) -> dict[str, Any]:
    assert nums[1:] == [0.5, "x"] and opts["tags"] == nums
    return {"n": len(nums) + opts["size"], "data": [b"x" * opts["size"], opts, {"nested": [[[]]]}]}


def host_big(n: int = 70) -> list[bytes]:
    return [b"x" * 1000] * n


HOSTS = {"echo": host_echo, "make": host_make, "big": host_big}


class Driver:
    """One sandbox on a loop of its own, called synchronously."""

    def __init__(self, elf: Path, **options: Any) -> None:
        self.loop = asyncio.new_event_loop()
        self.sb = self.loop.run_until_complete(self._create(elf, options))
        self.snapshot = self.loop.run_until_complete(self.sb.snapshot())

    @staticmethod
    async def _create(elf: Path, options: dict[str, Any]) -> aionub.Sandbox:
        return await aionub.Sandbox.create(elf, host_functions=HOSTS, **options)

    def call(self, name: str, *args: Any) -> Any:
        if self.sb.poisoned:
            self.loop.run_until_complete(self.sb.restore(self.snapshot))
        return self.loop.run_until_complete(self.sb.call(name, *args, timeout=10))

    def close(self) -> None:
        self.loop.run_until_complete(self.sb.aclose())
        self.loop.close()


@pytest.fixture(scope="module")
def sb(guest: Path) -> Iterator[Driver]:
    driver = Driver(guest)
    yield driver
    driver.close()


def same(a: Any, b: Any) -> bool:
    """Equal after a round trip: NaN matches NaN, -0.0 only -0.0, tuples come back as lists."""
    if isinstance(a, float):
        if math.isnan(a):
            return isinstance(b, float) and math.isnan(b)
        return type(b) is float and a == b and math.copysign(1, a) == math.copysign(1, b)
    if isinstance(a, list | tuple):
        return type(b) is list and len(a) == len(b) and all(same(x, y) for x, y in zip(a, b, strict=True))
    if isinstance(a, dict):
        return type(b) is dict and list(a) == list(b) and all(same(a[k], b[k]) for k in a)
    return type(a) is type(b) and a == b


scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-(2**63), 2**63 - 1),
    st.sampled_from([2**63 - 1, -(2**63), 0, -1]),
    st.floats(allow_nan=True, allow_infinity=True),
    st.sampled_from([float("nan"), -0.0, 0.0, float("inf"), float("-inf"), 5e-324, 1.7976931348623157e308]),
    st.text(),
    st.binary(max_size=40),
)
values = st.recursive(
    scalars,
    lambda children: st.one_of(
        st.lists(children, max_size=6),
        st.lists(children, max_size=3).map(tuple),
        st.dictionaries(st.text(max_size=10), children, max_size=6),
    ),
    max_leaves=40,
)


# ---- round trips ------------------------------------------------------------------------


def test_signatures_show_any(sb: Driver) -> None:
    fns = {name: str(fn) for name, fn in sb.sb.functions.items()}
    assert fns["echo"] == "echo(any) -> any"
    assert fns["pick"] == "pick(int, any, float) -> any"
    assert fns["count"] == "count(any) -> int"


@SETTINGS
@given(values)
def test_echo_round_trip(sb: Driver, value: Any) -> None:
    """Python -> the guest's decoder -> ab_value -> its encoder -> Python."""
    assert same(value, sb.call("echo", value))


@settings(SETTINGS, max_examples=60)
@given(values)
def test_host_function_round_trip(sb: Driver, value: Any) -> None:
    """Guest -> host function argument -> host function result -> guest
    (a heap copy in one block) -> the call's result."""
    assert same([value], sb.call("via_host", [value]))


def test_values_the_guest_reads(sb: Driver) -> None:
    value = [1, "a", {"k": [b"x", None, 1.5, {"é": True}]}, (1, 2), {}]
    assert sb.call("count", value) == 14
    assert sb.call("pick", 1, [1, 2.5, "x"], 2) == 5.0
    assert sb.call("pick", 2, [1, 2.5, "x"], 2) == "x"
    assert sb.call("pick", 9, [], 1.0) is None
    assert sb.call("get", {"a": 1, "b": [2, {"c": None}]}, "b") == [2, {"c": None}]
    assert sb.call("get", {"a": 1}, "z") == "<missing>"
    assert sb.call("get", [1], "a") == "<missing>"
    assert sb.call("echo", "nul\x00inside") == "nul\x00inside"  # an any str may hold NUL
    assert sb.call("bad_result", "deepest") == deep(_abi.MAX_DEPTH)
    assert sb.call("six", 1, -2, {"c": [3]}, "d", True, 2**63 - 1) == [1, -2, {"c": [3]}, "d", True, 2**63 - 1]


def deep(levels: int) -> list[Any]:
    value: list[Any] = []
    for _ in range(levels - 1):
        value = [value]
    return value


def test_typed_parameters_are_unchanged(sb: Driver) -> None:
    with pytest.raises(TypeError, match=r"get\(\) argument 2 must be str, not list"):
        sb.call("get", {}, ["k"])
    with pytest.raises(TypeError, match=r"pick\(\) argument 1 must be int, not dict"):
        sb.call("pick", {}, [], 1.0)
    assert not sb.sb.poisoned


def test_caller_errors_name_the_path_and_do_not_poison(sb: Driver) -> None:
    with pytest.raises(TypeError, match=r"^echo\(\) argument 1\[3\]\['price'\]: cannot pass a value of type set"):
        sb.call("echo", [0, 1, 2, {"price": {1.5}}])
    with pytest.raises(TypeError, match=r"^echo\(\) argument 1\['a'\]: dict keys must be str, not tuple"):
        sb.call("echo", {"a": {(1, 2): 3}})
    cycle: dict[str, Any] = {}
    cycle["me"] = [cycle]
    with pytest.raises(ValueError, match=r"^echo\(\) argument 1\['me'\]\[0\]: the dict contains itself"):
        sb.call("echo", cycle)
    with pytest.raises(ValueError, match="nest deeper than 64 levels"):
        sb.call("echo", deep(_abi.MAX_DEPTH + 1))
    with pytest.raises(ValueError, match=r"the arguments of echo\(\) take \d+ bytes, more than the 65536-byte"):
        sb.call("echo", [b"x" * 1000] * 70)
    assert not sb.sb.poisoned
    assert sb.call("echo", [1]) == [1]


# ---- ownership: no leaks, with a bounded heap ----------------------------------------------


def test_owned_results_are_freed(sb: Driver) -> None:
    """build() returns ~150 KB of owned heap memory per call; 200 calls are
    several times the heap, so a leak would end in ab_abort(12)."""
    assert sb.call("build", 3) == {"items": ["item 0", "item 1", "item 2"], "n": 3, "static": "not owned"}
    for _ in range(200):
        result = sb.call("build", 2000)
        assert len(result["items"]) == 2000
    assert result["items"][1999] == "item 1999"


def test_host_call_results_and_arguments_are_freed(sb: Driver) -> None:
    """Each host call's result (a list, a dict, 20 KB of bytes) is one heap
    block freed by ab_value_free; each big any argument is one block freed
    after the call."""
    assert sb.call("host_many", 3000, 20000) == 3000 * 20003
    arg = [{"k": list(range(100))} for _ in range(40)]
    for _ in range(300):
        assert sb.call("count", arg) == 1 + 40 * 102
    for _ in range(200):
        assert sb.call("via_host", [arg])[0] == arg


# ---- invalid results from the guest --------------------------------------------------------

BAD_RESULTS = [
    ("null_items", r"result: list with a NULL items pointer and length 3"),
    ("bad_utf8", r"result\['price'\]\[1\]: str is not valid UTF-8"),
    ("bad_key", r"result\['\.*'\]: a dict key is not valid UTF-8"),
    ("dup_key", r"result\['a'\]: the dict has this key twice"),
    ("dup_key_many", r"result\['k7'\]: the dict has this key twice"),
    ("deep", r"result(\[0\]){64}: lists and dicts nest deeper than 64 levels"),
    ("cycle", r"result(\[0\]){64}: lists and dicts nest deeper than 64 levels"),
    ("bad_type", r"result\[0\]: invalid ab_value type 42"),
    ("any_type", r"result\[0\]: invalid ab_value type 8"),
]


@pytest.mark.parametrize(("kind", "message"), BAD_RESULTS)
def test_invalid_results_abort_with_the_path(sb: Driver, kind: str, message: str) -> None:
    with pytest.raises(aionub.GuestAborted, match=r"bad_result\(\) returned an invalid value: " + message) as info:
        sb.call("bad_result", kind)
    assert info.value.code == -1 and sb.sb.poisoned


def test_invalid_host_call_arguments_are_errors_in_the_guest(sb: Driver) -> None:
    assert sb.call("host_bad_arg") == "host function echo: argument 1['k'][1]: str is not valid UTF-8 (at byte 0)"


def test_a_result_too_large_aborts(sb: Driver) -> None:
    assert len(sb.call("big", 60, 1000)) == 60
    with pytest.raises(aionub.GuestAborted, match=r"big\(\) result \(a list\) does not fit in the output buffer"):
        sb.call("big", 70, 1000)


def test_a_host_result_too_large_is_a_host_function_error(sb: Driver) -> None:
    with pytest.raises(aionub.HostFunctionError, match="more than the 65536-byte output buffer"):
        sb.call("call_host", "big", [])
    assert not sb.sb.poisoned
    assert sb.call("call_host", "big", [10]) == [b"x" * 1000] * 10


# ---- forged records: the host's decoder in a real sandbox ---------------------------------------

LIST, DICT = _abi.TAG_LIST, _abi.TAG_DICT
PORT_RESULT, PORT_HOSTCALL = 0xE1, 0xE2  # AB_PORT_RESULT, AB_PORT_HOSTCALL


def hdr(tag: int, count: int) -> bytes:
    return struct.pack("<BI", tag, count)


def key(k: bytes) -> bytes:
    return encode_string(k)


FORGED = [
    ("count_lie", hdr(LIST, 1000) + b"\x00\x00", "claims 1000 items but only 2 bytes"),
    ("count_huge", hdr(DICT, 2**32 - 1) + key(b"a") + b"\x00", "claims 4294967295 entries"),
    ("dup_key", hdr(DICT, 2) + key(b"k") + b"\x00" + key(b"k") + b"\x02" + b"\x00" * 8,
     r"'k' at offset \d+ appears twice"),
    ("dup_nested", hdr(LIST, 1) + hdr(DICT, 2) + (key(b"\xc3\xa9") + b"\x00") * 2, "'é' at offset .* appears twice"),
    ("bad_key_utf8", hdr(DICT, 1) + key(b"\xed\xa0\x80") + b"\x00", "not valid UTF-8"),
    ("key_no_nul", hdr(DICT, 1) + b"\x01\x00\x00\x00kk\x00", "lacks its NUL"),
    ("bad_inner_tag", hdr(LIST, 2) + b"\x00\x08", "unknown value tag 8"),
    ("any_tag", b"\x08", "unknown value tag 8"),
    ("bad_inner_bool", hdr(DICT, 1) + key(b"b") + b"\x01\x07", "bool value 7"),
    ("truncated", hdr(LIST, 2) + b"\x02\x01\x00", "needs 8 more bytes"),
    ("trailing", hdr(LIST, 0) + b"junk", "4 unexpected trailing bytes"),
    ("deep", hdr(LIST, 1) * 65 + b"\x00", "nest deeper than 64 levels"),
]


@pytest.mark.parametrize(("kind", "record", "message"), FORGED, ids=[f[0] for f in FORGED])
def test_forged_results_are_protocol_errors(sb: Driver, kind: str, record: bytes, message: str) -> None:
    with pytest.raises(GuestProtocolError, match=message):
        sb.call("forge_raw", b"\x00" + record, PORT_RESULT)
    assert sb.sb.poisoned


@pytest.mark.parametrize(("kind", "record", "message"), FORGED, ids=[f[0] for f in FORGED])
def test_forged_host_call_arguments_are_protocol_errors(sb: Driver, kind: str, record: bytes, message: str) -> None:
    request = encode_string(b"echo") + b"\x01" + record
    with pytest.raises(GuestProtocolError, match=message):
        sb.call("forge_raw", request, PORT_HOSTCALL)
    assert sb.sb.poisoned


@pytest.mark.parametrize("port", [PORT_RESULT, PORT_HOSTCALL])
def test_hostile_nesting_of_a_million_levels(guest: Path, port: int) -> None:
    """5 MB of nested list headers in the output buffer: rejected at level 65."""
    driver = Driver(guest, output_size=8 << 20, memory_size=32 << 20)
    try:
        with pytest.raises(GuestProtocolError, match="nest deeper than 64 levels"):
            driver.call("forge_deep", 10**6, port)
        assert driver.sb.poisoned
        driver.loop.run_until_complete(driver.sb.restore(driver.snapshot))
        assert driver.call("echo", [[1]]) == [[1]]
    finally:
        driver.close()


# ---- the guest's decoder against the host's ------------------------------------------------------


def host_decode(record: bytes) -> tuple[str, Any]:
    r = Reader(memoryview(record), len(record), "value")
    try:
        value = r.value()
    except GuestProtocolError as exc:
        return "error", str(exc)
    return "ok", (value, r.pos)


def records() -> st.SearchStrategy[bytes]:
    piece = st.one_of(
        st.binary(max_size=12),
        st.integers(0, 9).map(lambda t: bytes([t])),
        st.tuples(st.sampled_from([LIST, DICT]), st.integers(0, 4)).map(lambda h: hdr(*h)),
        st.sampled_from([0, 1, 5, 255, 2**31, 2**32 - 1]).map(lambda n: struct.pack("<I", n)),
        st.text(max_size=6).map(lambda s: encode_string(s.encode())),
        st.binary(max_size=6).map(encode_string),
        values.map(lambda v: encode_value(v, "v")),
    )
    return st.one_of(values.map(lambda v: encode_value(v, "v")), st.lists(piece, max_size=10).map(b"".join))


@SETTINGS
@given(records(), st.booleans())
def test_guest_decoder_agrees_with_the_host(sb: Driver, record: bytes, copy: bool) -> None:
    """Whatever the host accepts, the guest's decoder accepts and re-encodes
    to the same bytes; whatever the guest rejects, the host rejects too (the
    host is stricter: UTF-8 and duplicate keys, which the guest's encoder
    refuses instead). A read past the record would show as a difference, a
    fault, or a leak (the heap is bounded; the examples run in one sandbox)."""
    if len(record) > 60000:
        return
    guest = sb.call("decode_copy" if copy else "decode_inplace", record)
    host = host_decode(record)
    if host[0] == "ok":
        assert guest[0] == "ok", (record, guest)
        consumed = host[1][1]
        assert guest[1] == record[:consumed] and guest[2] == consumed
    if guest[0] == "bad":
        assert host[0] == "error"
    if guest[0] == "refused":
        assert host[0] == "error" and ("UTF-8" in guest[1] or "twice" in guest[1])


@pytest.mark.parametrize(
    ("record", "outcome"),
    [
        (hdr(LIST, 1) * 64 + b"\x00", "ok"),
        (hdr(LIST, 1) * 65 + b"\x00", "bad"),
        (hdr(LIST, 1) * 10000, "bad"),
        (hdr(LIST, 3) + b"\x00\x00", "bad"),
        (hdr(DICT, 1) + b"\x00" * 5, "bad"),
        (hdr(DICT, 1) + b"\x01\x00\x00\x00ab\x00", "bad"),
        (hdr(LIST, 1) + b"\x01\x02", "bad"),
        (hdr(DICT, 2) + (key(b"k") + b"\x00") * 2, "refused"),
        (hdr(LIST, 1) + b"\x04" + encode_string(b"\xff"), "refused"),
    ],
)
def test_guest_decoder_on_hostile_bytes(sb: Driver, record: bytes, outcome: str) -> None:
    for fn in ("decode_copy", "decode_inplace"):
        assert sb.call(fn, record)[0] == outcome
