"""Resource limits: each option has a safe default, is enforced, and is
checked when out of range.

The heap has no option of its own: it is whatever ``memory_size`` leaves
between the output buffer and the stack's guard page (docs/security.md), so
``memory_size`` bounds it, and these tests check exactly that."""

from __future__ import annotations

import gc
import logging
from pathlib import Path

import pytest

import aionub
from hostile import hostile_guest

pytestmark = pytest.mark.anyio

KiB = 1024
MiB = 1024 * KiB
IMAGE_BASE = 0x100000


@pytest.fixture(scope="session")
def guest(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return hostile_guest(tmp_path_factory)


def layout(sb: aionub.Sandbox) -> object:
    assert sb._native is not None
    return sb._native.layout


@pytest.mark.no_kvm
def test_safe_defaults() -> None:
    config = aionub.SandboxConfig()
    assert config.memory_size == 8 * MiB
    assert config.stack_size == 256 * KiB
    assert config.input_size == 64 * KiB
    assert config.output_size == 64 * KiB
    assert config.max_log_bytes == 1 * MiB
    assert config.init_timeout == 5.0


# ---- memory_size and the heap ----------------------------------------------------------


@pytest.mark.parametrize("memory_size", [4 * MiB, 8 * MiB, 32 * MiB])
async def test_heap_is_what_memory_size_leaves(guest: Path, memory_size: int) -> None:
    async with aionub.Sandbox.create(guest, memory_size=memory_size) as sb:
        lay = layout(sb)
        assert lay.heap_addr == lay.output_addr + lay.output_size  # type: ignore[attr-defined]
        assert lay.heap_addr + lay.heap_size == lay.guard_addr  # type: ignore[attr-defined]
        assert lay.stack_addr + lay.stack_size == memory_size  # type: ignore[attr-defined]
        heap = lay.heap_size  # type: ignore[attr-defined]
        assert memory_size - 2 * MiB < heap < memory_size
        # The allocator hands out nearly all of it, and no more.
        assert await sb.call("alloc", heap - 64 * KiB) == heap - 64 * KiB
        assert await sb.call("alloc", heap) == -1
        assert await sb.call("alloc", memory_size) == -1
        assert await sb.call("alloc", 2**62) == -1
        assert not sb.poisoned


async def test_writing_past_the_heap_hits_the_guard_page(guest: Path) -> None:
    async with aionub.Sandbox.create(guest, memory_size=4 * MiB) as sb:
        lay = layout(sb)
        heap = lay.heap_size  # type: ignore[attr-defined]
        assert await sb.call("touch_heap", heap) == heap
        with pytest.raises(aionub.StackOverflow) as info:
            await sb.call("touch_heap", heap + 4096)
        assert info.value.address == lay.guard_addr  # type: ignore[attr-defined]


def rss_bytes() -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    raise AssertionError("no VmRSS")


async def test_host_memory_is_bounded_by_memory_size(guest: Path) -> None:
    # Guest memory is mapped lazily: only the pages the guest touches cost
    # host memory, never more than memory_size, and closing returns them.
    memory_size = 32 * MiB
    gc.collect()
    before = rss_bytes()
    sb = await aionub.Sandbox.create(guest, memory_size=memory_size)
    try:
        assert rss_bytes() - before < 4 * MiB  # an untouched sandbox is small
        heap = layout(sb).heap_size  # type: ignore[attr-defined]
        assert await sb.call("touch_heap", heap) == heap
        grown = rss_bytes() - before
        assert heap - 1 * MiB <= grown <= memory_size + 4 * MiB
        # Touching it all again costs nothing more.
        assert await sb.call("touch_heap", heap) == heap
        assert rss_bytes() - before <= memory_size + 4 * MiB
    finally:
        await sb.aclose()
    gc.collect()
    assert rss_bytes() - before < 4 * MiB


async def test_largest_memory_size(guest: Path) -> None:
    async with aionub.Sandbox.create(guest, memory_size=256 * MiB) as sb:
        assert await sb.call("alloc", 100 * MiB) == 100 * MiB
        # the last word of memory (top of the stack: _start's return address)
        assert IMAGE_BASE <= await sb.call("read_at", 256 * MiB - 8) < IMAGE_BASE + MiB
        with pytest.raises(aionub.GuestFault) as info:
            await sb.call("read_at", 256 * MiB)
        assert info.value.address == 256 * MiB


# ---- stack_size ----------------------------------------------------------------------------


@pytest.mark.parametrize(("stack_size", "fits", "overflows"), [(64 * KiB, 100, 400), (1 * MiB, 3000, 6000)])
async def test_stack_size_bounds_recursion(guest: Path, stack_size: int, fits: int, overflows: int) -> None:
    # recurse() uses a little over 256 bytes of stack per level.
    async with aionub.Sandbox.create(guest, stack_size=stack_size) as sb:
        assert await sb.call("recurse", fits) == fits
        snap = await sb.snapshot()
        with pytest.raises(aionub.StackOverflow) as info:
            await sb.call("recurse", overflows)
        lay = layout(sb)
        assert lay.stack_size == stack_size  # type: ignore[attr-defined]
        assert lay.guard_addr <= info.value.address < lay.stack_addr  # type: ignore[attr-defined, operator]
        await sb.restore(snap)
        assert await sb.call("recurse", fits) == fits


# ---- input_size and output_size ----------------------------------------------------------------


async def test_input_size_bounds_the_arguments(guest: Path) -> None:
    async with aionub.Sandbox.create(guest, input_size=4096) as sb:
        # kind (1), name "arg_size" (4 + 8 + 1), nargs (1), tag (1), length (4), data, NUL (1)
        largest = 4096 - 1 - 13 - 1 - 1 - 4 - 1
        assert await sb.call("arg_size", b"a" * largest) == largest
        with pytest.raises(ValueError, match="4096-byte input buffer"):
            await sb.call("arg_size", b"a" * (largest + 1))
        assert not sb.poisoned  # refused before the guest ran
        assert await sb.call("add", 1, 2) == 3


async def test_output_size_bounds_guest_results(guest: Path) -> None:
    async with aionub.Sandbox.create(guest, output_size=8192) as sb:
        largest = 8192 - 1 - 1 - 4 - 1  # status, tag, length, data, NUL
        assert await sb.call("result_of_size", largest) == b"r" * largest
        snap = await sb.snapshot()
        # The SDK refuses to write a larger result (a guest that writes it
        # anyway and claims the length is refused by the host: see
        # test_hostile.py::test_runtime_told_the_output_buffer_is_huge).
        with pytest.raises(aionub.GuestAborted, match="does not fit in the output buffer"):
            await sb.call("result_of_size", largest + 1)
        await sb.restore(snap)
        assert await sb.call("add", 1, 2) == 3


async def test_output_size_bounds_host_function_results(guest: Path) -> None:
    hosts = {"sized": lambda n: b"s" * n}
    async with aionub.Sandbox.create(guest, output_size=8192, host_functions=hosts) as sb:
        largest = 8192 - 1 - 1 - 4 - 1
        assert await sb.call("host_result_size", largest) == largest
        with pytest.raises(aionub.HostFunctionError, match="more than the 8192-byte output buffer"):
            await sb.call("host_result_size", largest + 1)
        assert not sb.poisoned


# ---- max_log_bytes ----------------------------------------------------------------------------------


async def test_max_log_bytes_per_call(guest: Path, caplog: pytest.LogCaptureFixture) -> None:
    # Records of 1000 bytes on the wire (level, length, 994 bytes, NUL).
    async with aionub.Sandbox.create(guest, max_log_bytes=10_000) as sb:
        for _ in range(2):  # the budget is per call
            caplog.clear()
            with caplog.at_level(logging.WARNING, logger="aionub.guest"):
                assert await sb.call("flood_log", 994 * 50, 994) == 50
            guest_records = [r for r in caplog.records if r.name == "aionub.guest"]
            flood = [r for r in guest_records if "LLLL" in r.getMessage()]
            assert len(flood) == 10
            dropped = [r for r in guest_records if "dropped" in r.getMessage()]
            assert len(dropped) == 1 and "over 10000 bytes" in dropped[0].getMessage()
        assert not sb.poisoned


async def test_default_log_budget_passes_ordinary_logging(guest: Path, caplog: pytest.LogCaptureFixture) -> None:
    async with aionub.Sandbox.create(guest) as sb:
        with caplog.at_level(logging.WARNING, logger="aionub.guest"):
            assert await sb.call("flood_log", 100 * 1000, 1000) == 100
        assert sum("LLLL" in r.getMessage() for r in caplog.records) == 100
        assert not any("dropped" in r.getMessage() for r in caplog.records)


# ---- out-of-range options ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("options", "error", "message"),
    [
        ({"memory_size": 256 * MiB + 4096}, ValueError, "memory_size must be between"),
        ({"memory_size": 1 * MiB}, ValueError, "memory_size must be between"),
        ({"memory_size": 8 * MiB + 1}, ValueError, "memory_size must be a multiple of 4096"),
        ({"memory_size": 2 * MiB, "stack_size": 1 * MiB}, ValueError, "too small"),
        ({"stack_size": 8 * KiB}, ValueError, "stack_size must be between"),
        ({"stack_size": 100_000}, ValueError, "stack_size must be a multiple of 4096"),
        ({"input_size": 0}, ValueError, "input_size must be positive"),
        ({"input_size": 200 * MiB}, ValueError, "input_size must be between"),
        ({"output_size": 1000}, ValueError, "output_size must be a multiple of 4096"),
        ({"output_size": 200 * MiB}, ValueError, "output_size must be between"),
        ({"max_log_bytes": 0}, ValueError, "max_log_bytes must be positive"),
        ({"max_log_bytes": 1.5}, TypeError, "max_log_bytes must be an int"),
        ({"heap_size": 1 * MiB}, TypeError, "unknown sandbox option 'heap_size'"),
    ],
)
async def test_out_of_range_options(
    guest: Path, options: dict[str, object], error: type[Exception], message: str
) -> None:
    with pytest.raises(error, match=message):
        await aionub.Sandbox.create(guest, **options)
