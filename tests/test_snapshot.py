"""Snapshot and restore: exact state, the way out of poisoning, refusals."""

from __future__ import annotations

import threading
import time

import pytest

import aionub

pytestmark = pytest.mark.anyio


def guest_memory(sb: aionub.Sandbox) -> bytes:
    assert sb._native is not None
    return bytes(sb._native.memory)


async def test_restore_brings_memory_back_exactly() -> None:
    async with aionub.Sandbox.create(aionub.DEMO_GUEST, host_functions={"id": lambda x: x}) as sb:
        await sb.call("counter")
        snap = await sb.snapshot()
        before = guest_memory(sb)
        assert await sb.call("alloc", 200_000) == 200_000
        assert await sb.call("counter") == 2
        assert await sb.call("call_host", "id", 5) == 5
        assert await sb.call("echo", b"x" * 30_000) == b"x" * 30_000
        await sb.call("log", "a log record")
        assert guest_memory(sb) != before
        await sb.restore(snap)
        assert guest_memory(sb) == before
        # And it runs on exactly as it did after the snapshot.
        assert await sb.call("counter") == 2
        assert await sb.call("fib", 20) == 6765


async def test_restore_is_repeatable() -> None:
    async with aionub.Sandbox.create(aionub.DEMO_GUEST) as sb:
        snap = await sb.snapshot()
        for _ in range(50):
            assert await sb.call("counter") == 1
            assert await sb.call("mul", 1.25, 4.0) == 5.0
            await sb.restore(snap)


@pytest.mark.parametrize(
    "poison",
    [
        ("fault", "read_null"),
        ("fault", "gp"),
        ("overflow",),
        ("abort", 3, "bye"),
    ],
    ids=["pf", "gp", "overflow", "abort"],
)
async def test_restore_clears_poisoning_after_errors(poison: tuple[object, ...]) -> None:
    async with aionub.Sandbox.create(aionub.DEMO_GUEST) as sb:
        snap = await sb.snapshot()
        with pytest.raises(aionub.SandboxError):
            await sb.call(*poison)  # type: ignore[arg-type]
        assert sb.poisoned
        with pytest.raises(aionub.SandboxPoisoned):
            await sb.call("noop")
        with pytest.raises(aionub.SandboxPoisoned):
            await sb.snapshot()  # a poisoned sandbox cannot be snapshotted
        await sb.restore(snap)
        assert not sb.poisoned
        assert await sb.call("counter") == 1
        assert await sb.call("add", 40, 2) == 42


async def test_restore_after_timeout_and_kill() -> None:
    async with aionub.Sandbox.create(aionub.DEMO_GUEST) as sb:
        snap = await sb.snapshot()
        with pytest.raises(aionub.CallTimeout):
            await sb.call("spin", timeout=0.02)
        await sb.restore(snap)
        assert await sb.call("counter") == 1
        handle = sb.interrupt_handle()
        killer = threading.Thread(target=lambda: (time.sleep(0.03), handle.kill()))
        killer.start()
        with pytest.raises(aionub.ExecutionCancelled):
            await sb.call("spin")
        killer.join()
        await sb.restore(snap)
        assert await sb.call("counter") == 1


async def test_snapshot_restores_into_another_sandbox_of_the_same_guest() -> None:
    async with aionub.Sandbox.create(aionub.DEMO_GUEST) as a, aionub.Sandbox.create(aionub.DEMO_GUEST) as b:
        for _ in range(5):
            await a.call("counter")
        snap = await a.snapshot()
        await b.restore(snap)
        assert await b.call("counter") == 6
        assert await a.call("counter") == 6


async def test_restore_refuses_a_different_layout() -> None:
    async with aionub.Sandbox.create(aionub.DEMO_GUEST) as a, \
            aionub.Sandbox.create(aionub.DEMO_GUEST, memory_size=16 * 1024 * 1024) as b:
        snap = await a.snapshot()
        with pytest.raises(ValueError, match="different memory layout"):
            await b.restore(snap)
        assert await b.call("add", 1, 1) == 2


async def test_restore_refuses_a_different_guest(tmp_path: object) -> None:
    from pathlib import Path

    src = Path(str(tmp_path)) / "other.c"
    src.write_text(
        "#include <aionub_guest.h>\n"
        "static int64_t seven(void) { return 7; }\n"
        "AB_EXPORT(seven, AB_INT);\n"
    )
    other = aionub.build_guest([src], Path(str(tmp_path)) / "other.elf")
    async with aionub.Sandbox.create(aionub.DEMO_GUEST) as a, aionub.Sandbox.create(other) as b:
        snap = await a.snapshot()
        with pytest.raises(ValueError, match="different guest image"):
            await b.restore(snap)
        assert await b.call("seven") == 7


async def test_restore_needs_a_snapshot(demo: aionub.Sandbox) -> None:
    with pytest.raises(TypeError, match="Snapshot"):
        await demo.restore(b"not a snapshot")  # type: ignore[arg-type]


async def test_snapshot_of_a_closed_sandbox() -> None:
    sb = await aionub.Sandbox.create(aionub.DEMO_GUEST)
    snap = await sb.snapshot()
    await sb.aclose()
    with pytest.raises(aionub.SandboxClosed):
        await sb.snapshot()
    with pytest.raises(aionub.SandboxClosed):
        await sb.restore(snap)
    assert snap.nbytes > 0  # the snapshot outlives its sandbox
