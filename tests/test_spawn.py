"""Sandbox.spawn: sandboxes that start from a snapshot, their memory shared
copy-on-write with every other sandbox spawned from it.

Correctness (the same results as the template), isolation (a write in one
is seen nowhere else), exactness (right after spawning, and after any
restore, everything a guest can observe equals the snapshot: the dump of
tests/statedump.py), page sharing (read from /proc/self/smaps), pools that
grow from their template, and a few hundred spawned sandboxes at once.
"""

from __future__ import annotations

import gc
import os
from pathlib import Path
from typing import Any

import anyio
import pytest
import statedump
from procinfo import settled_vcpu_threads, vcpu_threads
from test_restore_exact import CASES, HOSTS, context_of, make_call

import aionub
from aionub._native import ffi, lib
from hostile import hostile_guest

pytestmark = pytest.mark.anyio

ASYNCIO_ONLY = pytest.mark.parametrize("anyio_backend", [pytest.param(("asyncio", {}), id="asyncio")])
SMALL = {"memory_size": 4 * 1024 * 1024}
PAGE = 4096


@pytest.fixture(scope="session")
def guest(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return hostile_guest(tmp_path_factory)


# ---- results and isolation -------------------------------------------------------------------


async def test_a_spawned_sandbox_answers_as_its_template_would() -> None:
    async with aionub.Sandbox.create(aionub.DEMO_GUEST) as template:
        assert await template.call("counter") == 1
        snap = await template.snapshot()
        expected = [await template.call("counter"), await template.call("fib", 18),
                    await template.call("echo", b"\x00xyz"), await template.call("alloc", 200_000)]
        async with aionub.Sandbox.spawn(snap) as sb:
            assert sb.functions == template.functions
            got = [await sb.call("counter"), await sb.call("fib", 18),
                   await sb.call("echo", b"\x00xyz"), await sb.call("alloc", 200_000)]
            assert got == expected == [2, 2584, b"\x00xyz", 200_000]
            assert "demo.elf" in repr(sb)


async def test_a_write_in_one_spawned_sandbox_is_seen_nowhere_else() -> None:
    async with aionub.Sandbox.create(aionub.DEMO_GUEST, **SMALL) as template:
        snap = await template.snapshot()
        async with aionub.Sandbox.spawn(snap) as a, aionub.Sandbox.spawn(snap) as b:
            for _ in range(5):
                await a.call("counter")
            await a.call("alloc", 500_000)
            assert await b.call("counter") == 1
            assert await template.call("counter") == 1
            async with aionub.Sandbox.spawn(snap) as c:  # the snapshot is unchanged too
                assert await c.call("counter") == 1
            assert await a.call("counter") == 6


async def test_restore_and_snapshot_of_a_spawned_sandbox() -> None:
    async with aionub.Sandbox.create(aionub.DEMO_GUEST, **SMALL) as template:
        snap = await template.snapshot()
        async with aionub.Sandbox.spawn(snap) as sb:
            assert await sb.call("counter") == 1
            with pytest.raises(aionub.GuestFault):
                await sb.call("fault", "div0")
            assert sb.poisoned
            await sb.restore(snap)
            assert not sb.poisoned and await sb.call("counter") == 1
            await sb.call("counter")
            later = await sb.snapshot()
            async with aionub.Sandbox.spawn(later) as grandchild:
                assert await grandchild.call("counter") == 3
            await template.restore(later)  # another sandbox of the image
            assert await template.call("counter") == 3


async def test_a_guest_with_main_runs_from_the_snapshot(tmp_path: Path) -> None:
    guest = aionub.build_guest([Path(__file__).parent / "run_guest" / "main.c"], tmp_path / "main.elf")
    async with aionub.Sandbox.create(guest) as template:
        snap = await template.snapshot()
        async with aionub.Sandbox.spawn(snap) as sb:
            for _ in range(2):
                assert (await sb.run(["p", "runs"])).returncode == 1  # each run from the snapshot
            assert (await sb.run(["p", "echo", "hi"])).stdout == b"hi\n"


async def test_options_the_snapshot_fixes_and_bad_arguments() -> None:
    async with aionub.Sandbox.create(aionub.DEMO_GUEST, **SMALL) as template:
        snap = await template.snapshot()
    assert snap.memory_options["memory_size"] == SMALL["memory_size"]
    with pytest.raises(ValueError, match="memory_size=4194304, not 8388608"):
        await aionub.Sandbox.spawn(snap, memory_size=8 * 1024 * 1024)
    with pytest.raises(ValueError, match="input_size"):
        await aionub.Sandbox.spawn(snap, input_size=128 * 1024)
    with pytest.raises(TypeError, match="needs a Snapshot"):
        aionub.Sandbox.spawn(b"not a snapshot")  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="unknown sandbox option"):
        aionub.Sandbox.spawn(snap, memory=1)
    # Options that do not touch memory are the spawned sandbox's own.
    async with aionub.Sandbox.spawn(snap, name="child", init_timeout=1.0) as sb:
        assert "child" in repr(sb) and await sb.call("add", 2, 3) == 5
    assert settled_vcpu_threads(0) == 0


async def test_host_functions_and_files_are_the_spawned_sandboxes_own() -> None:
    async with aionub.Sandbox.create(aionub.DEMO_GUEST, host_functions={"f": lambda x: x + 1}) as template:
        snap = await template.snapshot()
    async with aionub.Sandbox.spawn(snap, host_functions={"f": lambda x: x * 10}) as sb:
        assert await sb.call("call_host", "f", 4) == 40
    async with aionub.Sandbox.spawn(snap) as sb:
        with pytest.raises(aionub.HostFunctionError):
            await sb.call("call_host", "f", 4)


# ---- exactness ----------------------------------------------------------------------------------

SOME_CASES = [c for c in CASES if c.id in {"add", "alloc", "timeout", "kill", "overflow"}
              or c.id.startswith(("set_reg-zmm31", "set_reg-mxcsr", "insn-trap_flag", "ins-insl-table"))]


@ASYNCIO_ONLY
async def test_a_spawned_sandbox_is_exactly_at_the_snapshot(guest: Path) -> None:
    async with aionub.Sandbox.create(guest, host_functions=HOSTS) as template:
        for what, value in (("mxcsr", 0x3F80), ("zmm31", 7), ("k7", 3)):
            await template.call("set_reg", what, value)
        await template.call("alloc", 100_000)
        snap = await template.snapshot()
        want = statedump.dump(template)
        async with aionub.Sandbox.spawn(snap, host_functions=HOSTS) as sb:
            assert statedump.diff(want, statedump.dump(sb)) == []
            assert await sb.call("get_reg", "k7") == 3


@ASYNCIO_ONLY
@pytest.mark.parametrize("case", SOME_CASES)
async def test_restore_of_a_spawned_sandbox_is_exact(guest: Path, case: Any) -> None:
    assert len(SOME_CASES) >= 6
    async with aionub.Sandbox.create(guest, host_functions=HOSTS) as template:
        snap = await template.snapshot()
    async with aionub.Sandbox.spawn(snap, host_functions=HOSTS) as sb:
        ctx = await context_of(sb)
        await sb.restore(snap)  # context_of made calls
        before = statedump.dump(sb)
        await make_call(sb, case, ctx)
        await sb.restore(snap)  # the fast path: only pages written since
        assert statedump.diff(before, statedump.dump(sb)) == []
        assert await sb.call("add", 2, 3) == 5


# ---- sharing ----------------------------------------------------------------------------------------


def _smaps(address: int) -> dict[str, int]:
    """The /proc/self/smaps counters (kB) of the mapping that starts at ``address``."""
    fields: dict[str, int] = {}
    found = False
    with open("/proc/self/smaps") as f:
        for line in f:
            head = line.split()
            if "-" in head[0] and not head[0].endswith(":"):
                if found:
                    break
                found = int(head[0].split("-")[0], 16) == address
            elif found and head[0].endswith(":") and len(head) >= 2 and head[1].isdigit():
                fields[head[0][:-1]] = int(head[1])
    assert fields, f"no mapping at {address:#x}"
    return fields


def _memory_address(sb: aionub.Sandbox) -> int:
    return int(aionub._native.ffi.cast("uintptr_t", lib.ab_sandbox_memory(statedump._native_ptr(sb))))


@ASYNCIO_ONLY
async def test_pages_a_sandbox_never_writes_stay_shared() -> None:
    async with aionub.Sandbox.create(aionub.DEMO_GUEST, **SMALL) as template:
        await template.call("fib", 10)
        snap = await template.snapshot()
    async with aionub.Sandbox.spawn(snap) as a, aionub.Sandbox.spawn(snap) as b:
        for sb in (a, b):  # runs the guest's code: reads of shared pages
            await sb.call("fib", 15)
        sa, sb_ = _smaps(_memory_address(a)), _smaps(_memory_address(b))
        # The backing's pages (page cache, so counted as "dirty") that both
        # have read are the same physical pages; what a sandbox wrote is its
        # own anonymous copy.
        shared_a = sa["Shared_Clean"] + sa["Shared_Dirty"]
        assert shared_a >= 64 and sb_["Shared_Clean"] + sb_["Shared_Dirty"] >= 64, (sa, sb_)
        assert 0 < sa["Anonymous"] < sa["Rss"] and sa["Anonymous"] <= 64, sa
        await a.call("alloc", 1_000_000)  # a writes ~1 MB: its own pages only
        sa2, sb2 = _smaps(_memory_address(a)), _smaps(_memory_address(b))
        assert sa2["Anonymous"] >= sa["Anonymous"] + 900, (sa, sa2)
        assert sb2["Anonymous"] == sb_["Anonymous"], (sb_, sb2)
        assert sb2["Shared_Clean"] + sb2["Shared_Dirty"] >= 64, sb2


def _private_pages(sb: aionub.Sandbox) -> set[int]:
    """Guest pages of ``sb`` that are its own copies (anonymous), from /proc/self/pagemap."""
    size = int(sb._native.layout.memory_size)  # type: ignore[union-attr]
    address = _memory_address(sb)
    with open("/proc/self/pagemap", "rb") as f:
        f.seek(address // PAGE * 8)
        entries = f.read(size // PAGE * 8)
    pages = set()
    for i in range(size // PAGE):
        entry = int.from_bytes(entries[i * 8 : i * 8 + 8], "little")
        if entry >> 63 and not (entry >> 61) & 1:  # present, and not a file page
            pages.add(i)
    return pages


def _held_pages(snap: aionub.Snapshot) -> set[int]:
    buf = ffi.new("uint8_t[]", lib.ab_snapshot_present_size(snap._ptr))
    lib.ab_snapshot_present(snap._ptr, buf)
    bits = int.from_bytes(bytes(buf), "little")
    return {i for i in range(bits.bit_length()) if bits >> i & 1}


@ASYNCIO_ONLY
async def test_pages_that_will_be_written_are_copied_at_spawn() -> None:
    # A copy made later, at a write through KVM, would notify every VM in
    # the process (native/spawn.c): the page tables (accessed/dirty bits)
    # and the guest-writable pages the snapshot holds are copied up front,
    # so calls copy no page of the snapshot's image.
    async with aionub.Sandbox.create(aionub.DEMO_GUEST, **SMALL) as template:
        snap = await template.snapshot()  # right after start-up: no call has run
    async with aionub.Sandbox.spawn(snap) as sb:
        at_spawn = _private_pages(sb)
        assert 0x4000 // PAGE in at_spawn  # the first page table
        layout = sb._native.layout  # type: ignore[union-attr]
        assert layout.stack_addr // PAGE + layout.stack_size // PAGE - 1 in at_spawn  # the stack's top page
        assert not any(p < 0x4000 // PAGE for p in at_spawn)  # PML4, PDPT, PD stay shared
        assert at_spawn < _held_pages(snap)  # code and read-only data stay shared
        for _ in range(3):
            await sb.call("fib", 15)
            await sb.call("echo", b"x" * 1000)
        held = _held_pages(snap)
        new = _private_pages(sb) - at_spawn
        assert new and not new & held, sorted(new & held)  # only pages the image does not hold (zero until now)


async def test_the_shared_image_outlives_the_snapshot() -> None:
    async with aionub.Sandbox.create(aionub.DEMO_GUEST, **SMALL) as template:
        snap = await template.snapshot()
    sb = await aionub.Sandbox.spawn(snap)
    try:
        assert await sb.call("counter") == 1
        del snap
        gc.collect()  # the snapshot and its memfd descriptor are gone; the mapping holds the image
        assert await sb.call("alloc", 500_000) == 500_000
        assert await sb.call("counter") == 2
        again = await sb.snapshot()
        async with aionub.Sandbox.spawn(again) as child:
            assert await child.call("counter") == 3
    finally:
        await sb.aclose()


# ---- many, and pools -------------------------------------------------------------------------------


@ASYNCIO_ONLY
async def test_two_hundred_spawned_sandboxes() -> None:
    async with aionub.Sandbox.create(aionub.DEMO_GUEST, **SMALL) as template:
        await template.call("counter")
        snap = await template.snapshot()
    sandboxes: list[aionub.Sandbox] = []
    try:
        async with anyio.create_task_group() as tg:
            async def one() -> None:
                sandboxes.append(await aionub.Sandbox.spawn(snap))
            for _ in range(200):
                tg.start_soon(one)
        assert vcpu_threads() == 200
        results = [await sb.call("counter") for sb in sandboxes]
        assert results == [2] * 200
    finally:
        for sb in sandboxes:
            await sb.aclose()
    assert settled_vcpu_threads(0) == 0


async def test_a_pool_grows_from_its_template() -> None:
    setups = 0

    async def setup(sb: aionub.Sandbox) -> None:
        nonlocal setups
        setups += 1
        for _ in range(3):
            await sb.call("counter")

    async with aionub.SandboxPool(aionub.DEMO_GUEST, size=3, max_size=5, setup=setup, **SMALL) as pool:
        assert pool.size == 3 and setups == 1
        async with pool.acquire() as a, pool.acquire() as b, pool.acquire() as c, pool.acquire() as d:
            assert pool.size == 4 and setups == 1  # grown by spawning
            assert [await sb.call("counter") for sb in (a, b, c, d)] == [4, 4, 4, 4]
        for _ in range(4):
            assert await pool.call("counter") == 4  # reset to the template
    assert settled_vcpu_threads(0) == 0


async def test_script_pools_spawn_too() -> None:
    async with aionub.JsSandbox.pool(setup="var hits = 0; function f() { return ++hits; }", size=2) as pool:
        for _ in range(3):
            async with pool.acquire() as sb:
                assert await aionub.JsSandbox(sb).eval("f()") == 1


def test_a_forked_child_can_spawn_from_an_inherited_snapshot(tmp_path: Path) -> None:
    async def take() -> aionub.Snapshot:
        async with aionub.Sandbox.create(aionub.DEMO_GUEST, **SMALL) as sb:
            await sb.call("counter")
            (await sb.snapshot()).save(tmp_path / "s.snap")
        return aionub.Snapshot.load(tmp_path / "s.snap")

    async def counter(snap: aionub.Snapshot) -> int:
        async with aionub.Sandbox.spawn(snap) as sb:
            return int(await sb.call("counter"))

    snap = anyio.run(take)
    assert anyio.run(counter, snap) == 2
    pid = os.fork()
    if pid == 0:  # the child: its own sandboxes from the inherited snapshot
        code = 1
        try:
            code = 0 if anyio.run(counter, snap) == 2 else 2
        finally:
            os._exit(code)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0
    assert anyio.run(counter, snap) == 2  # and the parent's still works
