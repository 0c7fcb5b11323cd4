"""Every function of the bundled demo guest, through the public API."""

from __future__ import annotations

import logging

import pytest

import aionub

pytestmark = pytest.mark.anyio


async def test_noop_returns_none(demo: aionub.Sandbox) -> None:
    assert await demo.call("noop") is None


@pytest.mark.parametrize(
    ("a", "b", "expected"),
    [(2, 3, 5), (-7, 7, 0), (2**62, 2**62, -(2**63)), (-(2**63), -1, 2**63 - 1)],
    ids=["small", "zero", "wraps-up", "wraps-down"],
)
async def test_add_is_i64(demo: aionub.Sandbox, a: int, b: int, expected: int) -> None:
    assert await demo.call("add", a, b) == expected


async def test_mul_floats(demo: aionub.Sandbox) -> None:
    assert await demo.call("mul", 1.5, -4.0) == -6.0
    assert await demo.call("mul", 3, 0.5) == 1.5  # an int is accepted where a float is expected


@pytest.mark.parametrize("data", [b"", b"\x00\xff\x00", bytes(range(256)) * 100])
async def test_echo_bytes(demo: aionub.Sandbox, data: bytes) -> None:
    result = await demo.call("echo", data)
    assert result == data
    assert type(result) is bytes


async def test_echo_accepts_bytes_like(demo: aionub.Sandbox) -> None:
    assert await demo.call("echo", bytearray(b"abc")) == b"abc"
    assert await demo.call("echo", memoryview(b"xyz")) == b"xyz"


@pytest.mark.parametrize(("s", "expected"), [("hello", "HELLO"), ("", ""), ("MiXeD 123 é", "MIXED 123 é")])
async def test_upper_is_ascii_only(demo: aionub.Sandbox, s: str, expected: str) -> None:
    assert await demo.call("upper", s) == expected


async def test_fib(demo: aionub.Sandbox) -> None:
    assert await demo.call("fib", 0) == 0
    assert await demo.call("fib", 1) == 1
    assert await demo.call("fib", 25) == 75025


async def test_counter_keeps_guest_state_between_calls(demo: aionub.Sandbox) -> None:
    assert [await demo.call("counter") for _ in range(3)] == [1, 2, 3]


async def test_counter_is_per_sandbox(demo: aionub.Sandbox) -> None:
    await demo.call("counter")
    async with aionub.Sandbox.create(aionub.DEMO_GUEST) as other:
        assert await other.call("counter") == 1
    assert await demo.call("counter") == 2


async def test_call_host_sync_and_async() -> None:
    async def triple(x: int) -> int:
        return 3 * x

    hosts = {"double": lambda x: 2 * x, "triple": triple}
    async with aionub.Sandbox.create(aionub.DEMO_GUEST, host_functions=hosts) as sb:
        assert await sb.call("call_host", "double", 21) == 42
        assert await sb.call("call_host", "triple", -5) == -15


async def test_log_goes_to_guest_logger(demo: aionub.Sandbox, caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.INFO, logger="aionub.guest"):
        assert await demo.call("log", "hello from the guest") is None
    records = [r for r in caplog.records if r.name == "aionub.guest"]
    assert len(records) == 1
    assert records[0].levelno == logging.INFO
    assert "hello from the guest" in records[0].getMessage()
    assert records[0].sandbox_id == demo.id  # type: ignore[attr-defined]


async def test_abort_raises_guest_aborted(demo: aionub.Sandbox) -> None:
    with pytest.raises(aionub.GuestAborted) as info:
        await demo.call("abort", 42, "out of patience")
    assert info.value.code == 42
    assert info.value.message == "out of patience"
    assert demo.poisoned


@pytest.mark.parametrize(
    ("kind", "vector"),
    [("read_null", 14), ("write_code", 14), ("ud", 6), ("div0", 0), ("gp", 13)],
)
async def test_fault_kinds(demo: aionub.Sandbox, kind: str, vector: int) -> None:
    with pytest.raises(aionub.GuestFault) as info:
        await demo.call("fault", kind)
    fault = info.value
    assert not isinstance(fault, aionub.StackOverflow)
    assert fault.vector == vector
    assert fault.rip is not None and fault.rip >= 0x100000
    if kind == "read_null":
        assert fault.address == 0
    elif kind == "write_code":
        assert fault.address is not None and 0x100000 <= fault.address < fault.rip + 0x100000
        assert fault.error_code is not None and fault.error_code & 0x3 == 0x3  # write to a present page
    else:
        assert fault.address is None
    assert demo.poisoned


async def test_overflow_is_stack_overflow(demo: aionub.Sandbox) -> None:
    with pytest.raises(aionub.StackOverflow) as info:
        await demo.call("overflow")
    assert info.value.vector == 14
    assert demo.poisoned


async def test_alloc(demo: aionub.Sandbox) -> None:
    assert await demo.call("alloc", 1) == 1
    assert await demo.call("alloc", 1 << 20) == 1 << 20
    assert await demo.call("alloc", 1 << 40) == -1  # the heap is exhausted: malloc returns NULL
    assert await demo.call("alloc", 100) == 100  # and the guest goes on


async def test_functions_lists_the_demo_table(demo: aionub.Sandbox) -> None:
    fns = demo.functions
    assert set(fns) == {
        "noop", "add", "mul", "echo", "upper", "fib", "spin", "counter",
        "call_host", "log", "abort", "fault", "overflow", "alloc",
    }
    assert str(fns["add"]) == "add(int, int) -> int"
    assert str(fns["call_host"]) == "call_host(str, int) -> int"
    assert str(fns["noop"]) == "noop() -> None"
