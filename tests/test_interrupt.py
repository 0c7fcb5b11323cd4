"""InterruptHandle guarantees (each named after the seed's) and the rule
that the event loop never blocks on a kill."""

from __future__ import annotations

import asyncio
import itertools
import threading
import time

import anyio
import pytest

import aionub
from aionub import _native

pytestmark = pytest.mark.anyio


def kill_soon(handle: aionub.InterruptHandle, delay: float, results: list[bool]) -> threading.Thread:
    def run() -> None:
        time.sleep(delay)
        results.append(handle.kill())

    thread = threading.Thread(target=run)
    thread.start()
    return thread


async def test_kill_during_call_stops_it_and_returns_true(demo: aionub.Sandbox) -> None:
    results: list[bool] = []
    thread = kill_soon(demo.interrupt_handle(), 0.05, results)
    with pytest.raises(aionub.ExecutionCancelled):
        await demo.call("spin")
    thread.join()
    assert results == [True]
    assert not _native.lib.ab_interrupt_running(demo._ih)


async def test_kill_before_a_call_affects_neither_it_nor_later_ones(demo: aionub.Sandbox) -> None:
    handle = demo.interrupt_handle()
    assert handle.kill() is False
    assert handle.kill() is False
    assert await demo.call("fib", 15) == 610
    assert await demo.call("add", 2, 3) == 5
    assert demo.stats()["cancellations"] == 0


async def test_kill_while_in_host_function_returns_false_and_the_call_ends_cancelled() -> None:
    handle_box: list[aionub.InterruptHandle] = []
    kill_results: list[bool] = []

    def host(x: int) -> int:
        # Runs on the event loop thread while the vCPU is stopped: kill from
        # another thread and wait for it, as an independent killer would.
        thread = threading.Thread(target=lambda: kill_results.append(handle_box[0].kill()))
        thread.start()
        thread.join()
        return x

    async with aionub.Sandbox.create(aionub.DEMO_GUEST, host_functions={"host": host}) as sb:
        handle_box.append(sb.interrupt_handle())
        runs_before = sb.stats()["runs"]
        with pytest.raises(aionub.ExecutionCancelled):
            await sb.call("call_host", "host", 1)
        assert kill_results == [False]  # the guest was not running
        # One KVM_RUN up to the host call; the guest was never resumed.
        assert sb.stats()["runs"] - runs_before == 1
        assert sb.poisoned


async def test_timeout_during_sync_host_function_never_resumes_the_guest() -> None:
    def slow(x: int) -> int:
        time.sleep(0.1)  # blocks the loop past the deadline
        return x

    async with aionub.Sandbox.create(aionub.DEMO_GUEST, host_functions={"slow": slow}) as sb:
        runs_before = sb.stats()["runs"]
        with pytest.raises(aionub.CallTimeout):
            await sb.call("call_host", "slow", 1, timeout=0.02)
        assert sb.stats()["runs"] - runs_before == 1
        assert sb.poisoned


async def test_kills_never_hit_another_sandbox() -> None:
    async with aionub.Sandbox.create(aionub.DEMO_GUEST) as a, aionub.Sandbox.create(aionub.DEMO_GUEST) as b:
        results: list[bool] = []
        outcome: dict[str, object] = {}

        async def spin_a() -> None:
            try:
                await a.call("spin")
            except aionub.ExecutionCancelled as exc:
                outcome["a"] = exc

        async def work_b() -> None:
            total = 0
            for _ in range(200):
                total += await b.call("fib", 12)
            outcome["b"] = total

        thread = kill_soon(a.interrupt_handle(), 0.1, results)
        async with anyio.create_task_group() as tg:
            tg.start_soon(spin_a)
            tg.start_soon(work_b)
        thread.join()
        assert isinstance(outcome["a"], aionub.ExecutionCancelled)
        assert outcome["b"] == 200 * 144
        assert not b.poisoned and b.stats()["cancellations"] == 0


def test_sandbox_used_from_several_threads_in_turn_is_killable_everywhere() -> None:
    sandbox: list[aionub.Sandbox] = []

    async def create() -> None:
        sandbox.append(await aionub.Sandbox.create(aionub.DEMO_GUEST))

    async def use_and_kill() -> None:
        sb = sandbox[0]
        snap = await sb.snapshot()
        assert await sb.call("add", 1, 2) == 3
        results: list[bool] = []
        thread = kill_soon(sb.interrupt_handle(), 0.03, results)
        with pytest.raises(aionub.ExecutionCancelled):
            await sb.call("spin")
        thread.join()
        assert results == [True]
        await sb.restore(snap)

    def in_thread(coro_fn: object) -> None:
        errors: list[BaseException] = []

        def run() -> None:
            try:
                asyncio.run(coro_fn())  # type: ignore[operator]
            except BaseException as exc:  # reported below
                errors.append(exc)

        t = threading.Thread(target=run)
        t.start()
        t.join()
        if errors:
            raise errors[0]

    in_thread(create)
    for _ in range(3):  # three threads, three event loops, one sandbox
        in_thread(use_and_kill)
    asyncio.run(sandbox[0].aclose())


async def test_event_loop_keeps_ticking_while_a_kill_needs_retries() -> None:
    retry = 0.5
    async with aionub.Sandbox.create(aionub.DEMO_GUEST, interrupt_retry_delay=retry) as sb:
        _native.lib.ab_interrupt_lose_kicks(sb._ih, 1)  # the first kick is lost
        ticks: list[float] = []

        async def ticker() -> None:
            while True:
                ticks.append(time.monotonic())
                await anyio.sleep(0.01)

        async with anyio.create_task_group() as tg:
            tg.start_soon(ticker)
            start = time.monotonic()
            # A cancel scope, not timeout=: the event loop's kill protocol
            # (a kernel deadline would stop the guest without any kick).
            with anyio.move_on_after(0.05) as scope:
                await sb.call("spin")
            assert scope.cancelled_caught
            elapsed = time.monotonic() - start
            tg.cancel_scope.cancel()
        # Only the re-kick, a loop timer `retry` later, stopped the guest...
        assert elapsed >= 0.05 + retry * 0.9
        assert sb.stats()["signals_sent"] >= 1
        # ...and the loop kept running meanwhile: no gap near `retry` long.
        during = [t for t in ticks if start <= t <= start + elapsed]
        assert len(during) >= 10
        assert max(b - a for a, b in itertools.pairwise(during)) < retry / 2
