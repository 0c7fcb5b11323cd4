"""Resource hygiene: create/close cycles leave nothing behind, closing kills
what is running, the interpreter exits with sandboxes still open, and a
forked child cannot use (or harm) its parent's sandboxes.

The full 10,000-cycle soak is scripts/soak_create_close.py; the cycle test
here is the same loop, scaled down."""

from __future__ import annotations

import gc
import os
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import anyio
import pytest
from procinfo import settled_vcpu_threads, vcpu_threads

import aionub
from hostile import hostile_guest

pytestmark = pytest.mark.anyio

HERE = Path(__file__).resolve().parent


@pytest.fixture(scope="session")
def guest(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return hostile_guest(tmp_path_factory)


# ---- what a process holds ---------------------------------------------------------


def threads() -> int:
    return len(os.listdir("/proc/self/task"))


def fds() -> set[str]:
    out = set()
    for fd in os.listdir("/proc/self/fd"):
        try:
            out.add(f"{fd}->{os.readlink(f'/proc/self/fd/{fd}')}")
        except FileNotFoundError:
            pass
    return out


def mappings() -> int:
    with open("/proc/self/maps") as f:
        return sum(1 for _ in f)


def status(field: str) -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1]) * 1024
    raise AssertionError(field)


def snapshot_of_process() -> dict[str, object]:
    gc.collect()
    return {
        "vcpu_threads": vcpu_threads(),
        "threads": threads(),
        "fds": fds(),
        "mappings": mappings(),
        "vm_size": status("VmSize"),
        "rss": status("VmRSS"),
    }


# ---- create/close cycles ---------------------------------------------------------------

CYCLES = 300


async def test_create_close_cycles_leave_nothing_behind(guest: Path) -> None:
    """Sandboxes created and closed in every way (plain, after a call, after
    a fault, after a timeout, closed with a call in flight, after a snapshot
    and restore, failed creation) leave no vCPU thread, fd, mapping or
    memory behind."""

    async def cycle(i: int) -> None:
        kind = i % 7
        if kind == 6:
            with pytest.raises(aionub.InvalidGuest):
                await aionub.Sandbox.create(b"\x7fELF" + bytes(60))
            return
        sb = await aionub.Sandbox.create(guest)
        try:
            if kind == 1:
                assert await sb.call("add", i, 1) == i + 1
            elif kind == 2:
                with pytest.raises(aionub.GuestFault):
                    await sb.call("read_at", 0)
            elif kind == 3:
                with pytest.raises(aionub.CallTimeout):
                    await sb.call("spin", timeout=0.001)
            elif kind == 4:
                async with anyio.create_task_group() as tg:
                    async def spin() -> None:
                        with pytest.raises(aionub.SandboxClosed):
                            await sb.call("spin")
                    tg.start_soon(spin)
                    await anyio.sleep(0.002)
                    await sb.aclose()
            elif kind == 5:
                snap = await sb.snapshot()
                await sb.call("alloc", 100_000)
                await sb.restore(snap)
                del snap
        finally:
            await sb.aclose()

    # Warm up: process-wide state (the /dev/kvm fd, signal handler, the event
    # loop's own fds, allocator arenas) is created once and is not a leak.
    for i in range(14):
        await cycle(i)
    before = snapshot_of_process()
    for i in range(CYCLES):
        await cycle(i)
    after = snapshot_of_process()
    assert after["vcpu_threads"] == before["vcpu_threads"] == 0
    assert after["threads"] == before["threads"]
    assert after["fds"] == before["fds"]
    assert after["mappings"] <= before["mappings"] + 2  # the allocator may split an arena
    assert after["vm_size"] <= before["vm_size"] + 8 * 2**20  # type: ignore[operator]
    assert after["rss"] <= before["rss"] + 16 * 2**20  # type: ignore[operator]


async def test_many_open_at_once_then_closed(guest: Path) -> None:
    async def round_trip() -> dict[str, object]:
        sandboxes = [await aionub.Sandbox.create(guest, memory_size=4 * 2**20) for _ in range(64)]
        assert vcpu_threads() == 64
        for i, sb in enumerate(sandboxes):
            assert await sb.call("add", i, i) == 2 * i
        async with anyio.create_task_group() as tg:
            for sb in sandboxes:
                tg.start_soon(sb.aclose)
        return snapshot_of_process()

    before = snapshot_of_process()
    first = await round_trip()
    # The C library keeps the stacks of exited threads for reuse (and a
    # malloc arena per thread it has seen), so the first round may leave
    # mappings behind; later rounds reuse them and add nothing.
    second = await round_trip()
    third = await round_trip()
    for after in (first, second, third):
        assert after["vcpu_threads"] == 0 and after["fds"] == before["fds"]
        assert after["threads"] == before["threads"]
    assert third["mappings"] <= second["mappings"] + 2
    assert third["vm_size"] <= second["vm_size"] + 8 * 2**20  # type: ignore[operator]


# ---- closing with calls in flight ----------------------------------------------------------


@pytest.mark.parametrize("fn", ["spin", "host_loop", "flood_log_forever", "blocked_host_call"])
async def test_close_kills_the_call_in_flight(guest: Path, fn: str) -> None:
    """aclose() ends whatever the guest is doing: computing, calling the
    host in a loop, logging in a loop, or waiting for an async host
    function; the call raises SandboxClosed and the vCPU thread is gone."""
    forever = anyio.Event()

    async def wait_forever(x: int) -> int:
        await forever.wait()
        return x

    hosts = {"ping": (wait_forever if fn == "blocked_host_call" else (lambda x: x))}
    sb = await aionub.Sandbox.create(guest, host_functions=hosts, max_log_bytes=1024)
    outcome: list[BaseException] = []

    async def call() -> None:
        try:
            await sb.call("host_loop" if fn == "blocked_host_call" else fn)
        except aionub.SandboxError as exc:
            outcome.append(exc)

    async with anyio.create_task_group() as tg:
        tg.start_soon(call)
        await anyio.sleep(0.05)
        with anyio.fail_after(10):
            await sb.aclose()
    assert len(outcome) == 1 and isinstance(outcome[0], aionub.SandboxClosed), outcome
    assert sb.closed and settled_vcpu_threads(0) == 0


# ---- interpreter exit -------------------------------------------------------------------------

PRELUDE = """
import asyncio, os, sys, threading, time
import aionub
GUEST = aionub.DEMO_GUEST
"""

EXIT_SCENARIOS = {
    # never closed: the sandboxes are collected (and their vCPU threads
    # joined) at interpreter shutdown
    "left-open": """
        async def main():
            global kept
            kept = [await aionub.Sandbox.create(GUEST) for _ in range(20)]
            for sb in kept:
                await sb.call("add", 1, 2)
        asyncio.run(main())
    """,
    # sys.exit() in a task while another task's call spins: asyncio.run
    # cancels it, which kills the guest
    "exit-during-call": """
        async def main():
            sb = await aionub.Sandbox.create(GUEST)
            task = asyncio.ensure_future(sb.call("spin"))
            await asyncio.sleep(0.05)
            sys.exit(0)
        asyncio.run(main())
    """,
    # the main thread exits while a daemon thread's loop is inside a
    # spinning call that nothing will ever cancel
    "daemon-thread-spinning": """
        started = threading.Event()
        def worker():
            async def spin():
                sb = await aionub.Sandbox.create(GUEST)
                started.set()
                await sb.call("spin")
            asyncio.run(spin())
        threading.Thread(target=worker, daemon=True).start()
        started.wait(10)
        time.sleep(0.05)
    """,
    # the same, blocked in a host function that never returns
    "daemon-thread-in-host-call": """
        started = threading.Event()
        def block(x):
            started.set()
            time.sleep(3600)
        def worker():
            async def run():
                sb = await aionub.Sandbox.create(GUEST, host_functions={"block": block})
                await sb.call("call_host", "block", 1)
            asyncio.run(run())
        threading.Thread(target=worker, daemon=True).start()
        started.wait(10)
    """,
    # trio: a nursery of spinning calls cancelled on the way out
    "trio-cancelled": """
        import trio
        async def main():
            sbs = [await aionub.Sandbox.create(GUEST) for _ in range(4)]
            async with trio.open_nursery() as n:
                for sb in sbs:
                    n.start_soon(sb.call, "spin")
                await trio.sleep(0.05)
                n.cancel_scope.cancel()
        trio.run(main)
    """,
    # os._exit with calls running: nothing to wait for
    "os-exit-during-call": """
        async def main():
            sb = await aionub.Sandbox.create(GUEST)
            asyncio.ensure_future(sb.call("spin"))
            await asyncio.sleep(0.05)
            sys.stdout.flush()
            os._exit(0)
        asyncio.run(main())
    """,
}


@pytest.mark.parametrize("scenario", sorted(EXIT_SCENARIOS))
def test_interpreter_exit_with_live_sandboxes_does_not_hang(scenario: str) -> None:
    code = PRELUDE + textwrap.dedent(EXIT_SCENARIOS[scenario])
    started = time.monotonic()
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=30)
    elapsed = time.monotonic() - started
    assert proc.returncode == 0, proc.stderr
    assert "Traceback" not in proc.stderr, proc.stderr
    assert elapsed < 15


# ---- fork ---------------------------------------------------------------------------------------

FORK_SCRIPT = """
import asyncio, os, sys, threading, time
import aionub

loop = asyncio.new_event_loop()
threading.Thread(target=loop.run_forever, daemon=True).start()
def run(coro, timeout=10):
    return asyncio.run_coroutine_threadsafe(coro, loop).result(timeout)

busy = run(aionub.Sandbox.create(aionub.DEMO_GUEST))
idle = run(aionub.Sandbox.create(aionub.DEMO_GUEST))
snap = run(idle.snapshot())
assert run(idle.call("counter")) == 1
handle = busy.interrupt_handle()
spinning = asyncio.run_coroutine_threadsafe(busy.call("spin", timeout=1.5), loop)
time.sleep(0.05)

r, w = os.pipe()
pid = os.fork()
if pid == 0:
    lines = []
    def attempt(what, fn):
        try:
            fn()
            lines.append(f"{what}: no error")
        except aionub.SandboxError as exc:
            lines.append(f"{what}: {type(exc).__name__}: {exc}")
    try:
        attempt("call", lambda: asyncio.run(idle.call("counter")))
        attempt("call-busy", lambda: asyncio.run(busy.call("add", 1, 2)))
        attempt("snapshot", lambda: asyncio.run(idle.snapshot()))
        attempt("restore", lambda: asyncio.run(idle.restore(snap)))
        attempt("interrupt_handle", idle.interrupt_handle)
        attempt("kill", handle.kill)
        attempt("stats", idle.stats)
        async def own():
            async with aionub.Sandbox.create(aionub.DEMO_GUEST) as mine:
                return await mine.call("add", 40, 2)
        lines.append(f"own sandbox: {asyncio.run(own())}")
        attempt("aclose-idle", lambda: asyncio.run(idle.aclose()))
        attempt("aclose-busy", lambda: asyncio.run(busy.aclose()))
    except BaseException as exc:
        lines.append(f"unexpected: {exc!r}")
    os.write(w, "\\n".join(lines).encode())
    os._exit(0)
os.close(w)
_, status = os.waitpid(pid, 0)
report = b""
while chunk := os.read(r, 65536):
    report += chunk
print(report.decode())
print(f"child exit status: {status}")
# The parent's sandboxes are untouched by everything the child did.
try:
    spinning.result(10)
except aionub.CallTimeout:
    print("parent: busy call timed out as asked")
assert run(idle.call("counter")) == 2
run(busy.restore(snap))
assert run(busy.call("counter")) == 1
print("parent: sandboxes fine")
run(idle.aclose()); run(busy.aclose())
"""


def test_forked_child_gets_clear_errors_and_cannot_harm_the_parent() -> None:
    proc = subprocess.run([sys.executable, "-c", FORK_SCRIPT], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    lines = dict(line.split(": ", 1) for line in proc.stdout.splitlines() if ": " in line)
    for what in ("call", "call-busy", "snapshot", "restore", "interrupt_handle", "stats"):
        assert lines[what] == (
            f"SandboxError: sandbox {1 if what == 'call-busy' else 2} belongs to the parent process; "
            "a forked child must create its own"
        ), (what, proc.stdout)
    assert lines["kill"] == (
        "SandboxError: this interrupt handle belongs to the parent process; a forked child cannot stop its calls"
    )
    assert lines["own sandbox"] == "42"
    assert lines["aclose-idle"] == lines["aclose-busy"] == "no error"  # releases the child's copy only
    assert lines["child exit status"] == "0"
    assert "parent: busy call timed out as asked" in proc.stdout
    assert "parent: sandboxes fine" in proc.stdout


def test_fork_inside_a_coroutine_and_leave_the_async_with_in_the_child() -> None:
    # The child carries on in its copy of the event loop (which shares its
    # epoll instance with the parent's) and closes the sandbox on the way
    # out of `async with`: the parent's next call must still complete.
    code = """
import asyncio, os, aionub
async def main():
    async with aionub.Sandbox.create(aionub.DEMO_GUEST) as sb:
        assert await sb.call("add", 1, 2) == 3
        pid = os.fork()
        if pid == 0:
            try:
                async with sb:
                    pass
            finally:
                os._exit(0 if sb.closed else 3)
        _, status = os.waitpid(pid, 0)
        assert status == 0, status
        assert await asyncio.wait_for(sb.call("add", 2, 2), 5) == 4
        print("parent fine")
asyncio.run(main())
"""
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert proc.stdout.strip() == "parent fine"


def test_soak_script_smoke() -> None:
    script = HERE.parent / "scripts" / "soak_create_close.py"
    proc = subprocess.run(
        [sys.executable, str(script), "--cycles", "80", "--every", "40", "--warmup", "16"],
        capture_output=True, text=True, timeout=120,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "80 create/close cycles" in proc.stdout and "no leaks" in proc.stdout
