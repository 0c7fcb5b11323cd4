"""Many sandboxes at once, closing with calls in flight, and resources
released after close."""

from __future__ import annotations

import gc
import os
import random

import anyio
import pytest
from procinfo import settled_vcpu_threads, vcpu_threads

import aionub

pytestmark = pytest.mark.anyio


def open_fds() -> set[str]:
    fds = set()
    for fd in os.listdir("/proc/self/fd"):
        try:
            fds.add(f"{fd}->{os.readlink(f'/proc/self/fd/{fd}')}")
        except FileNotFoundError:
            pass  # the fd of the listdir itself
    return fds


async def test_hundred_sandboxes_call_concurrently() -> None:
    sandboxes: list[aionub.Sandbox] = []
    try:
        async with anyio.create_task_group() as tg:
            async def make() -> None:
                sandboxes.append(await aionub.Sandbox.create(aionub.DEMO_GUEST, memory_size=4 * 1024 * 1024))
            for _ in range(100):
                tg.start_soon(make)
        assert len(sandboxes) == 100
        results: dict[int, list[int]] = {}

        async def work(i: int, sb: aionub.Sandbox) -> None:
            rng = random.Random(i)
            out = results.setdefault(i, [])
            for _ in range(20):
                a, b = rng.randrange(1000), rng.randrange(1000)
                assert await sb.call("add", a, b) == a + b
                out.append(await sb.call("counter"))

        async with anyio.create_task_group() as tg:
            for i, sb in enumerate(sandboxes):
                tg.start_soon(work, i, sb)
        # Each sandbox's counter saw exactly its own 20 calls, in order.
        assert all(results[i] == list(range(1, 21)) for i in range(100))
    finally:
        for sb in sandboxes:
            await sb.aclose()


async def test_concurrent_calls_on_one_sandbox_are_serialised(demo: aionub.Sandbox) -> None:
    values: list[int] = []

    async def bump() -> None:
        values.append(await demo.call("counter"))

    async with anyio.create_task_group() as tg:
        for _ in range(50):
            tg.start_soon(bump)
    assert sorted(values) == list(range(1, 51))


async def test_close_with_call_in_flight_kills_it() -> None:
    sb = await aionub.Sandbox.create(aionub.DEMO_GUEST)
    outcome: list[BaseException] = []

    async def spinner() -> None:
        try:
            await sb.call("spin")
        except aionub.SandboxError as exc:
            outcome.append(exc)

    async def queued() -> None:
        try:
            await sb.call("noop")
        except aionub.SandboxError as exc:
            outcome.append(exc)

    async with anyio.create_task_group() as tg:
        tg.start_soon(spinner)
        await anyio.sleep(0.05)
        tg.start_soon(queued)
        await anyio.sleep(0.01)
        with anyio.fail_after(10):
            await sb.aclose()
    assert len(outcome) == 2
    assert all(isinstance(e, aionub.SandboxClosed) for e in outcome)
    assert sb.closed


async def test_no_thread_or_fd_left_after_close() -> None:
    # Warm up once so lazily opened process-wide resources (/dev/kvm,
    # the event loop's own fds) are not counted as leaks.
    async with aionub.Sandbox.create(aionub.DEMO_GUEST) as sb:
        await sb.call("noop")
    gc.collect()
    threads, fds = vcpu_threads(), open_fds()
    for _ in range(20):
        sandboxes = [await aionub.Sandbox.create(aionub.DEMO_GUEST) for _ in range(5)]
        assert vcpu_threads() == threads + 5
        for sb in sandboxes:
            assert await sb.call("fib", 10) == 55
        with pytest.raises(aionub.CallTimeout):
            await sandboxes[0].call("spin", timeout=0.01)
        for sb in sandboxes:
            await sb.aclose()
    gc.collect()
    assert settled_vcpu_threads(threads) == threads
    assert open_fds() == fds


async def test_failed_creation_leaves_nothing() -> None:
    async with aionub.Sandbox.create(aionub.DEMO_GUEST):
        pass
    gc.collect()
    threads, fds = vcpu_threads(), open_fds()
    for _ in range(10):
        with pytest.raises(aionub.InvalidGuest):
            await aionub.Sandbox.create(b"\x7fELF")
    gc.collect()
    assert settled_vcpu_threads(threads) == threads
    assert open_fds() == fds


async def test_host_function_errors_fail_the_call_without_poisoning() -> None:
    class Boom(Exception):
        pass

    def raises(x: int) -> int:
        raise Boom(f"no {x}")

    async def async_raises(x: int) -> int:
        await anyio.sleep(0)
        raise Boom("async no")

    hosts = {"raises": raises, "async_raises": async_raises, "wrong_type": lambda x: {x}}
    async with aionub.Sandbox.create(aionub.DEMO_GUEST, host_functions=hosts) as sb:
        with pytest.raises(aionub.HostFunctionError, match="Boom: no 7") as info:
            await sb.call("call_host", "raises", 7)
        assert isinstance(info.value.__cause__, Boom)
        with pytest.raises(aionub.HostFunctionError) as info:
            await sb.call("call_host", "async_raises", 1)
        assert isinstance(info.value.__cause__, Boom)
        with pytest.raises(aionub.HostFunctionError, match="cannot pass a value of type set") as info:
            await sb.call("call_host", "wrong_type", 1)
        assert isinstance(info.value.__cause__, TypeError)
        with pytest.raises(aionub.HostFunctionError, match="'missing', which does not exist"):
            await sb.call("call_host", "missing", 1)
        assert not sb.poisoned
        assert await sb.call("add", 2, 2) == 4


async def test_stats_count_calls_and_one_kvm_run_per_call(demo: aionub.Sandbox) -> None:
    before = aionub.process_stats()["calls"]
    runs = demo.stats()["runs"]
    for _ in range(5):
        await demo.call("noop")
    stats = demo.stats()
    assert stats["calls"] == 5
    assert stats["runs"] - runs == 5  # the hot path: exactly one KVM_RUN per call
    await demo.call("log", "one record")
    assert demo.stats()["runs"] - runs == 7  # a log record costs one more
    assert aionub.process_stats()["calls"] >= before + 6
