"""The seed's debug interrupt on InterruptHandle: kill_from_debugger(),
is_debug_interrupted(), clear_debug_interrupt(). A debug interrupt pauses
the guest (AB_EV_DEBUG_STOP); with no debugger attached the call resumes.
It never poisons and is never mistaken for a cancellation, nor a
cancellation for it: one EINTR, two reasons, and cancellation wins."""

from __future__ import annotations

import threading
import time

import pytest

import aionub
from aionub import _native

pytestmark = pytest.mark.anyio

lib = _native.lib


def in_thread(func: object, delay: float, results: list[object], sb: aionub.Sandbox | None = None) -> threading.Thread:
    """Run ``func`` in a thread after ``delay`` seconds and, given ``sb``,
    once its guest is running (a loaded machine may start the call late)."""

    def run() -> None:
        time.sleep(delay)
        while sb is not None and not lib.ab_interrupt_running(sb._ih):
            time.sleep(0.001)
        results.append(func())  # type: ignore[operator]

    thread = threading.Thread(target=run)
    thread.start()
    return thread


async def test_flag_set_read_and_cleared_with_no_call(demo: aionub.Sandbox) -> None:
    handle = demo.interrupt_handle()
    assert handle.is_debug_interrupted() is False
    assert handle.kill_from_debugger() is False  # nothing running: no signal
    assert handle.is_debug_interrupted() is True  # the flag stays set (seed)
    handle.clear_debug_interrupt()
    assert handle.is_debug_interrupted() is False
    assert await demo.call("add", 2, 3) == 5


async def test_debug_interrupt_during_a_call_pauses_and_resumes_without_a_debugger(demo: aionub.Sandbox) -> None:
    handle = demo.interrupt_handle()
    results: list[object] = []

    thread = in_thread(handle.kill_from_debugger, 0, results, demo)
    # fib(38) runs for a good fraction of a second; the pause must not
    # change its result.
    assert await demo.call("fib", 38) == 39088169
    thread.join()
    assert results == [True]  # the guest was running: it was signalled
    assert not demo.poisoned
    assert handle.is_debug_interrupted() is False  # the engine cleared it when it resumed the guest
    assert demo.stats()["cancellations"] == 0
    assert await demo.call("add", 1, 1) == 2


async def test_a_pending_debug_interrupt_pauses_the_next_call_at_its_start(demo: aionub.Sandbox) -> None:
    handle = demo.interrupt_handle()
    handle.kill_from_debugger()
    assert await demo.call("fib", 15) == 610  # paused at [T2], resumed
    assert handle.is_debug_interrupted() is False
    assert not demo.poisoned


async def test_kill_is_not_a_debug_stop(demo: aionub.Sandbox) -> None:
    handle = demo.interrupt_handle()
    results: list[object] = []
    thread = in_thread(handle.kill, 0.01, results, demo)
    with pytest.raises(aionub.ExecutionCancelled):
        await demo.call("spin")
    thread.join()
    assert results == [True]
    assert handle.is_debug_interrupted() is False
    assert demo.poisoned


async def test_debug_interrupt_then_kill_ends_cancelled(demo: aionub.Sandbox) -> None:
    handle = demo.interrupt_handle()
    results: list[object] = []

    def both() -> tuple[bool, bool]:
        paused = handle.kill_from_debugger()
        while not lib.ab_interrupt_running(demo._ih):  # resumed (no debugger)
            time.sleep(0.001)
        return paused, handle.kill()

    thread = in_thread(both, 0.01, results, demo)
    with pytest.raises(aionub.ExecutionCancelled):
        await demo.call("spin")
    thread.join()
    assert results == [(True, True)]
    assert demo.poisoned


async def test_kill_then_debug_interrupt_ends_cancelled(demo: aionub.Sandbox) -> None:
    handle = demo.interrupt_handle()
    results: list[object] = []

    def both() -> tuple[bool, bool]:
        killed = handle.kill()
        return killed, handle.kill_from_debugger()

    thread = in_thread(both, 0.01, results, demo)
    with pytest.raises(aionub.ExecutionCancelled):
        await demo.call("spin")
    thread.join()
    assert results == [(True, False)]  # stopped already: the debug interrupt found nothing running
    assert handle.is_debug_interrupted() is True  # left set for whoever clears it
    handle.clear_debug_interrupt()


async def test_both_at_once_cancellation_wins() -> None:
    # Both bits set while the vCPU is stopped (in a host function): the
    # resume meets them together at [T2], and CANCELLED wins.
    box: list[aionub.Sandbox] = []

    def host(x: int) -> int:
        ih = box[0]._ih
        lib.ab_interrupt_debug_interrupt(ih)
        lib.ab_interrupt_cancel(ih)
        return x

    async with aionub.Sandbox.create(aionub.DEMO_GUEST, host_functions={"h": host}) as sb:
        box.append(sb)
        with pytest.raises(aionub.ExecutionCancelled):
            await sb.call("call_host", "h", 1)
        assert sb.interrupt_handle().is_debug_interrupted() is True
        assert sb.stats()["cancellations"] == 1


async def test_debug_interrupt_alone_in_a_host_call_resumes() -> None:
    box: list[aionub.Sandbox] = []

    def host(x: int) -> int:
        lib.ab_interrupt_debug_interrupt(box[0]._ih)  # seen at [T2] on resume
        return x + 1

    async with aionub.Sandbox.create(aionub.DEMO_GUEST, host_functions={"h": host}) as sb:
        box.append(sb)
        assert await sb.call("call_host", "h", 41) == 42
        assert not sb.poisoned
        assert sb.interrupt_handle().is_debug_interrupted() is False


async def test_int3_without_debugging_stays_a_fault() -> None:
    from tests.debugging import debuggee

    async with aionub.Sandbox.create(debuggee()) as sb:
        with pytest.raises(aionub.GuestFault) as info:
            await sb.call("trap")
        assert info.value.vector == 3
        assert sb.poisoned


async def test_int3_with_debugging_but_no_debugger_is_a_fault() -> None:
    from tests.debugging import debuggee

    async with aionub.Sandbox.create(debuggee(), debug=True) as sb:
        with pytest.raises(aionub.GuestFault) as info:
            await sb.call("trap")
        assert info.value.vector == 3
        assert sb.poisoned
