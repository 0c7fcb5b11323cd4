"""Randomized lifecycle stress: calls, snapshots, restores, kills from other
threads, timeouts, cancellations and aclose() at random points, on several
sandboxes at once. It must end with no hung task, every outcome one that
the API documents, and no leaked fd or thread. Sized for 2 cores and a few
seconds per event loop; ``scripts/soak_kills.py`` is the long version of
the kill races."""

from __future__ import annotations

import os
import random

import anyio
import anyio.to_thread
import pytest
from procinfo import settled_vcpu_threads, vcpu_threads

import aionub
import aionub._native
from aionub._lifecycle import State

pytestmark = pytest.mark.anyio

SANDBOXES = 4
WORKERS = 8
OPS_PER_WORKER = 150
DEADLINE = 90.0
EXPECTED = (
    aionub.CallTimeout,
    aionub.ExecutionCancelled,
    aionub.SandboxClosed,
    aionub.SandboxPoisoned,
)


def open_fds() -> int:
    aionub._native.probe_kvm()  # /dev/kvm stays open once any sandbox opened it
    return len(os.listdir("/proc/self/fd"))


class Slot:
    """One sandbox of the stress, replaced by a fresh one when closed."""

    def __init__(self, sandbox: aionub.Sandbox, snapshot: aionub.Snapshot) -> None:
        self.sandbox = sandbox
        self.snapshot = snapshot
        self.replacing = False

    async def replace_if_closed(self) -> None:
        """A closed sandbox is replaced by whichever worker sees it first
        (the others meanwhile get SandboxClosed from the old one)."""
        if self.sandbox._engine.lifecycle.state is State.CLOSED and not self.replacing:
            self.replacing = True
            try:
                fresh = await new_slot()
                self.sandbox, self.snapshot = fresh.sandbox, fresh.snapshot
            finally:
                self.replacing = False


async def new_slot() -> Slot:
    sb = await aionub.Sandbox.create(aionub.DEMO_GUEST, memory_size=4 * 1024 * 1024)
    return Slot(sb, await sb.snapshot())


async def one_op(rng: random.Random, slot: Slot, counts: dict[str, int]) -> None:
    sb = slot.sandbox
    op = rng.choice(["add", "spin_timeout", "spin_cancel", "snapshot", "restore", "kill", "close", "counter"])
    counts[op] = counts.get(op, 0) + 1
    try:
        if op == "add":
            a, b = rng.randrange(10**6), rng.randrange(10**6)
            assert await sb.call("add", a, b) == a + b
        elif op == "counter":
            assert await sb.call("counter") >= 1
        elif op == "spin_timeout":
            with pytest.raises(aionub.CallTimeout):
                await sb.call("spin", timeout=rng.choice([0, 0.0005, 0.002, 0.01]))
        elif op == "spin_cancel":
            with anyio.move_on_after(rng.choice([0, 0.001, 0.005])):
                await sb.call("spin")
        elif op == "snapshot":
            slot.snapshot = await sb.snapshot()
        elif op == "restore":
            with anyio.move_on_after(rng.choice([0, 0.001, 1.0])):  # cancelled or not
                await sb.restore(slot.snapshot)
        elif op == "kill":
            handle = sb.interrupt_handle()
            async with anyio.create_task_group() as tg:
                async def spin() -> None:
                    try:
                        await sb.call("spin", timeout=2.0)
                    except EXPECTED:
                        pass

                tg.start_soon(spin)
                await anyio.sleep(rng.choice([0, 0.001]))
                await anyio.to_thread.run_sync(handle.kill)
        elif op == "close":
            with anyio.CancelScope() as scope:
                if rng.random() < 0.5:
                    scope.cancel()  # a cancelled close still closes
                await sb.aclose()
            assert sb._engine.lifecycle.state is State.CLOSED
    except EXPECTED:
        pass


async def worker(seed: int, slots: list[Slot], counts: dict[str, int]) -> None:
    rng = random.Random(seed)
    for _ in range(OPS_PER_WORKER):
        slot = rng.choice(slots)
        await slot.replace_if_closed()
        await one_op(rng, slot, counts)


async def test_random_lifecycle_operations_end_cleanly() -> None:
    threads, fds = vcpu_threads(), open_fds()
    slots = [await new_slot() for _ in range(SANDBOXES)]
    counts: dict[str, int] = {}
    try:
        with anyio.fail_after(DEADLINE):
            async with anyio.create_task_group() as tg:
                for seed in range(WORKERS):
                    tg.start_soon(worker, 1000 + seed, slots, counts)
    finally:
        with anyio.fail_after(DEADLINE):
            for slot in slots:
                await slot.sandbox.aclose()
    # Every kind of operation ran, and nothing leaked.
    assert set(counts) == {"add", "spin_timeout", "spin_cancel", "snapshot", "restore", "kill", "close", "counter"}
    assert all(slot.sandbox._engine.lifecycle.state is State.CLOSED for slot in slots)
    assert settled_vcpu_threads(threads) == threads
    assert open_fds() == fds
    # The library is still healthy afterwards.
    async with aionub.Sandbox.create(aionub.DEMO_GUEST) as sb:
        assert await sb.call("add", 2, 3) == 5
