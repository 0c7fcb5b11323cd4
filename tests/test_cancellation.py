"""Timeouts, task cancellation and InterruptHandle: the guest is really
stopped before the caller sees the exception, and the sandbox is poisoned."""

from __future__ import annotations

import threading
import time

import anyio
import pytest

import aionub

pytestmark = pytest.mark.anyio


def vcpu_running(sb: aionub.Sandbox) -> bool:
    from aionub import _native

    return bool(_native.lib.ab_interrupt_running(sb._ih))


async def test_timeout_stops_spin_and_poisons(demo: aionub.Sandbox) -> None:
    start = time.monotonic()
    with pytest.raises(aionub.CallTimeout) as info:
        await demo.call("spin", timeout=0.05)
    elapsed = time.monotonic() - start
    assert isinstance(info.value, TimeoutError)
    assert not vcpu_running(demo)  # stopped before the exception reached us
    assert 0.05 <= elapsed < 5
    assert demo.poisoned
    stats = demo.stats()  # stopped by the kernel's deadline
    assert stats["timeouts"] == 1 and stats["cancellations"] == 0
    with pytest.raises(aionub.SandboxPoisoned, match="timed out"):
        await demo.call("noop")


async def test_tiny_and_zero_timeouts_still_stop_the_guest(demo: aionub.Sandbox) -> None:
    for timeout in (0, 0.0001, 0.001):
        async with aionub.Sandbox.create(aionub.DEMO_GUEST) as sb:
            with pytest.raises(aionub.CallTimeout):
                await sb.call("spin", timeout=timeout)
            assert not vcpu_running(sb)
            assert sb.poisoned


async def test_timeout_not_reached_returns_result(demo: aionub.Sandbox) -> None:
    assert await demo.call("fib", 20, timeout=10) == 6765
    assert not demo.poisoned


async def test_cancel_scope_kills_the_guest(demo: aionub.Sandbox) -> None:
    with anyio.move_on_after(0.05) as scope:
        await demo.call("spin")
    assert scope.cancelled_caught
    assert not vcpu_running(demo)
    assert demo.poisoned


async def test_task_cancellation_kills_the_guest(demo: aionub.Sandbox) -> None:
    finished = anyio.Event()
    cancelled = []

    async def caller() -> None:
        try:
            await demo.call("spin")
        except anyio.get_cancelled_exc_class():
            cancelled.append(not vcpu_running(demo))
            raise
        finally:
            finished.set()

    async with anyio.create_task_group() as tg:
        tg.start_soon(caller)
        await anyio.sleep(0.05)
        tg.cancel_scope.cancel()
    await finished.wait()
    assert cancelled == [True]
    assert demo.poisoned
    with pytest.raises(aionub.SandboxPoisoned):
        await demo.call("noop")


async def test_event_loop_keeps_ticking_while_the_guest_spins(demo: aionub.Sandbox) -> None:
    ticks = 0

    async def ticker() -> None:
        nonlocal ticks
        while True:
            ticks += 1
            await anyio.sleep(0.005)

    async with anyio.create_task_group() as tg:
        tg.start_soon(ticker)
        with pytest.raises(aionub.CallTimeout):
            await demo.call("spin", timeout=0.3)
        tg.cancel_scope.cancel()
    assert ticks >= 10


async def test_interrupt_handle_kill_from_another_thread(demo: aionub.Sandbox) -> None:
    handle = demo.interrupt_handle()
    results: list[bool] = []

    def killer() -> None:
        time.sleep(0.05)
        results.append(handle.kill())

    thread = threading.Thread(target=killer)
    thread.start()
    with pytest.raises(aionub.ExecutionCancelled):
        await demo.call("spin", timeout=10)
    thread.join()
    assert results == [True]
    assert demo.poisoned
    assert not handle.dropped()


async def test_kill_with_no_call_running_affects_nothing(demo: aionub.Sandbox) -> None:
    handle = demo.interrupt_handle()
    assert handle.kill() is False
    assert await demo.call("add", 1, 2) == 3
    assert await demo.call("fib", 18) == 2584


async def test_handle_reports_dropped_after_close() -> None:
    sb = await aionub.Sandbox.create(aionub.DEMO_GUEST)
    handle = sb.interrupt_handle()
    assert not handle.dropped()
    await sb.aclose()
    assert handle.dropped()
    assert handle.kill() is False  # harmless after close


async def test_cancelled_creation_does_not_leak() -> None:
    with anyio.move_on_after(0):
        await aionub.Sandbox.create(aionub.DEMO_GUEST)
    async with aionub.Sandbox.create(aionub.DEMO_GUEST) as sb:
        assert await sb.call("noop") is None


async def test_timeout_while_in_async_host_function() -> None:
    entered = anyio.Event()

    async def slow(x: int) -> int:
        entered.set()
        await anyio.sleep(10)
        return x

    async with aionub.Sandbox.create(aionub.DEMO_GUEST, host_functions={"slow": slow}) as sb:
        start = time.monotonic()
        with pytest.raises(aionub.CallTimeout):
            await sb.call("call_host", "slow", 1, timeout=0.1)
        assert entered.is_set()
        assert time.monotonic() - start < 5
        assert sb.poisoned
