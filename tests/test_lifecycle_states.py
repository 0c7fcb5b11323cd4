"""The sandbox's lifecycle never hangs: closing while any command is in
flight, cancelling a close, cancelling a pool check-in. Every test has a
deadline and fails instead of hanging. See docs/cancellation.md, "Lifecycle"."""

from __future__ import annotations

import asyncio
import os
from typing import Any

import anyio
import pytest
from procinfo import settled_vcpu_threads, vcpu_threads

import aionub
import aionub._native
from aionub._lifecycle import State

pytestmark = pytest.mark.anyio

MiB = 1024 * 1024
BIG = {"memory_size": 64 * MiB}  # room for enough dirty pages to make snapshot/restore slow
DIRTY = 40 * MiB  # bytes the guest writes: a snapshot or restore copies them (milliseconds)
DEADLINE = 10.0


def in_flight(sb: aionub.Sandbox) -> str | None:
    return sb._engine.lifecycle.command


def state(sb: aionub.Sandbox) -> State:
    return sb._engine.lifecycle.state


def open_fds() -> int:
    aionub._native.probe_kvm()  # /dev/kvm stays open once any sandbox opened it
    return len(os.listdir("/proc/self/fd"))


ATTEMPTS = 20  # a 2-core machine may deschedule us for the whole command: try again


async def until_in_flight(sb: aionub.Sandbox, command: str, done: list[Any]) -> bool:
    """Yield to the other tasks until ``command`` is in flight on ``sb``
    (True) or the task running it has finished without us seeing it
    (False: this thread was not scheduled while it ran; try again)."""
    with anyio.fail_after(DEADLINE):
        while in_flight(sb) != command:
            if done:
                return False
            await anyio.sleep(0)
    return True


def is_cancelled(exc: BaseException) -> bool:
    return isinstance(exc, anyio.get_cancelled_exc_class())


# ---- aclose() while a snapshot or a restore is in flight ----------------------------------------


@pytest.mark.parametrize("command", ["snapshot()", "restore()"])
async def test_close_while_snapshot_or_restore_is_in_flight(command: str) -> None:
    threads, fds = vcpu_threads(), open_fds()
    for _ in range(ATTEMPTS):
        sb = await aionub.Sandbox.create(aionub.DEMO_GUEST, **BIG)
        base = await sb.snapshot()
        assert await sb.call("alloc", DIRTY) == DIRTY
        outcome: list[Any] = []

        async def run(sb: aionub.Sandbox = sb, base: aionub.Snapshot = base, outcome: list[Any] = outcome) -> None:
            if command == "snapshot()":
                outcome.append(await sb.snapshot())
            else:
                outcome.append(await sb.restore(base))

        with anyio.fail_after(DEADLINE):
            async with anyio.create_task_group() as tg:
                tg.start_soon(run)
                observed = await until_in_flight(sb, command, outcome)
                await sb.aclose()  # must wait for the command, then tear down
        # The command finished normally (it never enters the guest).
        assert len(outcome) == 1
        assert outcome[0] is None if command == "restore()" else isinstance(outcome[0], aionub.Snapshot)
        assert state(sb) is State.CLOSED
        assert settled_vcpu_threads(threads) == threads and open_fds() == fds
        if observed:
            break
    else:
        pytest.fail(f"{command} was never seen in flight in {ATTEMPTS} attempts")
    # The next sandbox (which may reuse the same fd numbers) works, kills included.
    async with aionub.Sandbox.create(aionub.DEMO_GUEST) as fresh:
        with pytest.raises(aionub.CallTimeout):
            await fresh.call("spin", timeout=0.02)


async def test_pool_close_while_a_checkin_is_restoring() -> None:
    threads = vcpu_threads()
    for _ in range(ATTEMPTS):
        pool = aionub.SandboxPool(aionub.DEMO_GUEST, size=1, **BIG)
        await pool.start()
        seen: list[aionub.Sandbox] = []
        done: list[bool] = []

        async def user(pool: aionub.SandboxPool = pool, seen: list[aionub.Sandbox] = seen,
                       done: list[bool] = done) -> None:
            try:
                async with pool.acquire() as sb:
                    seen.append(sb)
                    assert await sb.call("alloc", DIRTY) == DIRTY
            finally:
                done.append(True)

        with anyio.fail_after(DEADLINE):
            async with anyio.create_task_group() as tg:
                tg.start_soon(user)
                while not seen:
                    await anyio.sleep(0)
                observed = await until_in_flight(seen[0], "restore()", done)
                await pool.aclose()  # normal server shutdown with a check-in under way
        assert seen[0].closed and state(seen[0]) is State.CLOSED and pool.size == 0
        assert settled_vcpu_threads(threads) == threads
        if observed:
            break
    else:
        pytest.fail(f"the check-in's restore was never seen in flight in {ATTEMPTS} attempts")


# ---- cancelling aclose() --------------------------------------------------------------------------


async def test_cancelled_close_still_closes_and_the_busy_call_ends() -> None:
    """A TaskGroup shutting down (or wait_for) cancels an aclose() that is
    stopping a call: the close completes anyway, the call ends with
    SandboxClosed, and the cancellation is delivered afterwards."""
    threads = vcpu_threads()
    sb = await aionub.Sandbox.create(aionub.DEMO_GUEST)
    outcome: list[BaseException] = []

    async def spin() -> None:
        try:
            await sb.call("spin")
        except aionub.SandboxError as exc:
            outcome.append(exc)

    with anyio.fail_after(DEADLINE):
        async with anyio.create_task_group() as tg:
            tg.start_soon(spin)
            assert await until_in_flight(sb, "spin()", outcome)
            with anyio.CancelScope() as scope:
                scope.cancel()
                await sb.aclose()
            assert scope.cancelled_caught  # the cancellation was not lost
    assert len(outcome) == 1 and isinstance(outcome[0], aionub.SandboxClosed), outcome
    assert state(sb) is State.CLOSED
    assert settled_vcpu_threads(threads) == threads
    with anyio.fail_after(DEADLINE):
        await sb.aclose()  # idempotent, and prompt


@pytest.mark.parametrize("anyio_backend", ["asyncio"])
async def test_native_task_cancel_of_close_leaves_nothing_half_closed() -> None:
    """``task.cancel()`` on an aclose() (which anyio shields do not stop):
    the sandbox still closes completely; later aclose() calls return."""
    threads, fds = vcpu_threads(), open_fds()
    sb = await aionub.Sandbox.create(aionub.DEMO_GUEST)
    spinner = asyncio.create_task(sb.call("spin"))
    assert await until_in_flight(sb, "spin()", [])
    closer = asyncio.create_task(sb.aclose())
    await asyncio.sleep(0)  # the close has begun
    closer.cancel()
    with pytest.raises(asyncio.CancelledError):
        await asyncio.wait_for(closer, DEADLINE)
    with pytest.raises(aionub.SandboxClosed):
        await asyncio.wait_for(spinner, DEADLINE)
    assert state(sb) is State.CLOSED
    await asyncio.wait_for(sb.aclose(), DEADLINE)
    assert settled_vcpu_threads(threads) == threads and open_fds() == fds


@pytest.mark.parametrize("anyio_backend", ["asyncio"])
async def test_wait_for_on_close_with_a_busy_call() -> None:
    sb = await aionub.Sandbox.create(aionub.DEMO_GUEST)
    spinner = asyncio.create_task(sb.call("spin"))
    assert await until_in_flight(sb, "spin()", [])
    # A deadline far shorter than the close: it fires during the close,
    # which completes anyway; the deadline is then reported.
    with pytest.raises(TimeoutError):
        await asyncio.wait_for(sb.aclose(), 0.0001)
    assert state(sb) is State.CLOSED
    with pytest.raises(aionub.SandboxClosed):
        await asyncio.wait_for(spinner, DEADLINE)


# ---- cancelling a pool check-in ------------------------------------------------------------------


async def test_cancelled_checkin_during_restore_keeps_the_entry() -> None:
    for _ in range(ATTEMPTS):
        pool = aionub.SandboxPool(aionub.DEMO_GUEST, size=1, acquire_timeout=DEADLINE, **BIG)
        async with pool:
            seen: list[aionub.Sandbox] = []
            done: list[bool] = []
            scope = anyio.CancelScope()

            async def user(pool: aionub.SandboxPool = pool, seen: list[aionub.Sandbox] = seen,
                           done: list[bool] = done, scope: anyio.CancelScope = scope) -> None:
                try:
                    with scope:
                        async with pool.acquire() as sb:
                            seen.append(sb)
                            assert await sb.call("counter") == 1
                            assert await sb.call("alloc", DIRTY) == DIRTY
                finally:
                    done.append(True)

            with anyio.fail_after(DEADLINE):
                async with anyio.create_task_group() as tg:
                    tg.start_soon(user)
                    while not seen:
                        await anyio.sleep(0)
                    observed = await until_in_flight(seen[0], "restore()", done)
                    scope.cancel()
            # The restore ran to the end and the sandbox went back, restored.
            assert pool.size == 1 and pool.idle == 1
            with anyio.fail_after(DEADLINE):
                async with pool.acquire() as sb:
                    assert sb is seen[0]
                    assert await sb.call("counter") == 1
        if observed:
            break
    else:
        pytest.fail(f"the check-in's restore was never seen in flight in {ATTEMPTS} attempts")


async def test_checkin_cancelled_before_the_restore_begins_drops_the_sandbox() -> None:
    """A check-in in an already cancelled scope may not get to restore: the
    sandbox is then closed and dropped (never handed out dirty), and the
    pool grows a fresh one on demand."""
    pool = aionub.SandboxPool(aionub.DEMO_GUEST, size=1, acquire_timeout=DEADLINE)
    async with pool:
        with anyio.fail_after(DEADLINE):
            with anyio.CancelScope() as scope:
                async with pool.acquire() as sb:
                    assert await sb.call("counter") == 1
                    scope.cancel()
            for _ in range(3):
                async with pool.acquire() as sb:
                    assert await sb.call("counter") == 1  # never the previous user's state
        assert pool.size == 1


@pytest.mark.parametrize("anyio_backend", ["asyncio"])
async def test_native_task_cancel_of_a_checkin() -> None:
    for _ in range(ATTEMPTS):
        pool = aionub.SandboxPool(aionub.DEMO_GUEST, size=1, acquire_timeout=DEADLINE, **BIG)
        async with pool:
            seen: list[aionub.Sandbox] = []

            async def user(pool: aionub.SandboxPool = pool, seen: list[aionub.Sandbox] = seen) -> None:
                async with pool.acquire() as sb:
                    seen.append(sb)
                    assert await sb.call("counter") == 1
                    assert await sb.call("alloc", DIRTY) == DIRTY

            task = asyncio.create_task(user())
            while not seen:
                await asyncio.sleep(0)
            done: list[bool] = []
            task.add_done_callback(lambda _, done=done: done.append(True))  # type: ignore[misc]
            observed = await until_in_flight(seen[0], "restore()", done)
            task.cancel()
            if observed:
                with pytest.raises(asyncio.CancelledError):
                    await asyncio.wait_for(task, DEADLINE)
            else:
                await task
            for _ in range(3):  # with size=1 a lost entry would make these time out
                async with pool.acquire() as sb:
                    assert await sb.call("counter") == 1
        if observed:
            break
    else:
        pytest.fail(f"the check-in's restore was never seen in flight in {ATTEMPTS} attempts")


# ---- the state shows -----------------------------------------------------------------------------


async def test_repr_shows_the_state() -> None:
    sb = await aionub.Sandbox.create(aionub.DEMO_GUEST)
    snap = await sb.snapshot()
    assert repr(sb).endswith("[idle]>")
    with pytest.raises(aionub.CallTimeout):
        await sb.call("spin", timeout=0.01)
    assert repr(sb).endswith("[poisoned]>")
    await sb.restore(snap)
    assert repr(sb).endswith("[idle]>")
    await sb.aclose()
    assert repr(sb).endswith("[closed]>")


async def test_busy_state_names_the_command() -> None:
    async with aionub.Sandbox.create(aionub.DEMO_GUEST) as sb:
        async with anyio.create_task_group() as tg:
            tg.start_soon(lambda: sb.call("spin", timeout=0.2))
            assert await until_in_flight(sb, "spin()", [])
            assert repr(sb).endswith("[busy: spin()]>")
            tg.cancel_scope.cancel()
