"""The kick signal (SIGRTMIN + sig_rt_min_offset) is never delivered, so
nothing an application does with it can break a kick or be broken by one:
aionub installs no handler; kicks, deadlines (`timeout=`) and CPU budgets
stop the guest under SIG_DFL, SIG_IGN or the application's own handler,
even while another thread flips between them; the application's handler
receives exactly its own signals; a signal the application aims at a vCPU
thread is harmless; and the offset is validated against the signals that
exist. docs/cancellation.md, "The kick signal", states the contract.

Every scenario that could kill or hang the process if broken runs in a
child process with a deadline, so a regression fails the test instead of
taking pytest down."""

from __future__ import annotations

import errno
import json
import signal
import subprocess
import sys
import textwrap
import threading
import time

import anyio
import pytest
from procinfo import vcpu_thread_ids

import aionub
from aionub import _native

AnyioBackend = tuple[str, dict[str, object]]

MAX_OFFSET = signal.SIGRTMAX - signal.SIGRTMIN
CHILD_DEADLINE = 60.0  # seconds; a sound child needs one or two

# Shared by every child: the event loop to use comes from the anyio_backend
# fixture; the child reports a JSON object on its last line of output.
_PRELUDE = """\
import ctypes, json, os, signal, sys, threading, time
import anyio
import aionub
from aionub import _native
sys.path.insert(0, %(tests)r)
from procinfo import vcpu_thread_ids

backend, backend_options = sys.argv[1], json.loads(sys.argv[2])
SIG = signal.SIGRTMIN
report = {}
libc = ctypes.CDLL(None, use_errno=True)
libc.signal.restype = ctypes.c_void_p
libc.signal.argtypes = (ctypes.c_int, ctypes.c_void_p)
SIG_DFL, SIG_IGN = 0, 1

def caught():
    # Whether the process has a handler for SIG, as the kernel sees it
    # (Python's signal.getsignal only knows its own table).
    with open("/proc/self/status") as f:
        line = next(l for l in f if l.startswith("SigCgt:"))
    return bool(int(line.split()[1], 16) >> (SIG - 1) & 1)

async def outcome(sb, fn="spin", **limits):
    # What the call raised (or returned); a poisoned sandbox is restored.
    try:
        result = await sb.call(fn, **limits)
    except aionub.CpuTimeout:
        result = "CpuTimeout"
    except aionub.CallTimeout:
        result = "CallTimeout"
    except aionub.ExecutionCancelled:
        result = "ExecutionCancelled"
    if sb.poisoned:
        await sb.restore(snaps[sb])
    return result

snaps = {}

async def every_way_to_stop(sb):
    # The kernel deadline, the CPU budget, the loop's own cancellation and a
    # kill() from another thread; each stops a spinning guest.
    snaps[sb] = snaps.get(sb) or await sb.snapshot()
    got = [await outcome(sb, timeout=0.02), await outcome(sb, cpu_timeout=0.02)]
    with anyio.move_on_after(0.02) as scope:
        await sb.call("spin")
    got.append("cancelled" if scope.cancelled_caught and sb.poisoned else "not cancelled")
    await sb.restore(snaps[sb])
    handle = sb.interrupt_handle()

    def killer():
        while not _native.lib.ab_interrupt_running(sb._ih):
            time.sleep(0.001)
        time.sleep(0.005)
        handle.kill()

    thread = threading.Thread(target=killer, daemon=True)
    thread.start()
    got.append(await outcome(sb))
    await anyio.to_thread.run_sync(thread.join)
    return got

STOPPED = ["CallTimeout", "CpuTimeout", "cancelled", "ExecutionCancelled"]
"""
_EPILOGUE = """
anyio.run(main, backend=backend, backend_options=backend_options)
print(json.dumps(report), flush=True)
"""


def run_child(body: str, anyio_backend: AnyioBackend) -> dict[str, object]:
    name, options = anyio_backend
    tests = str(__import__("pathlib").Path(__file__).parent)
    script = _PRELUDE % {"tests": tests} + textwrap.dedent(body) + _EPILOGUE
    try:
        proc = subprocess.run(
            [sys.executable, "-c", script, name, json.dumps(options)],
            capture_output=True,
            text=True,
            timeout=CHILD_DEADLINE,
        )
    except subprocess.TimeoutExpired as exc:
        pytest.fail(f"the child hung for {CHILD_DEADLINE} s (a guest that could not be stopped?): {exc.stderr!r}")
    if proc.returncode < 0:
        pytest.fail(f"the child was killed by signal {-proc.returncode}: {proc.stderr}")
    assert proc.returncode == 0, proc.stderr
    report: dict[str, object] = json.loads(proc.stdout.splitlines()[-1])
    return report


# ---- aionub leaves the signal's disposition alone ---------------------------------


def test_no_handler_is_installed_and_vcpu_threads_block_every_signal(anyio_backend: AnyioBackend) -> None:
    report = run_child(
        """
        async def main():
            report["before"] = caught()
            async with aionub.Sandbox.create(aionub.DEMO_GUEST) as sb:
                report["stopped"] = await every_way_to_stop(sb)
                report["kicks"] = sb.stats()["signals_sent"]
                report["during"] = caught()
                report["python"] = signal.getsignal(SIG) == signal.SIG_DFL
                blocked = []
                for tid in vcpu_thread_ids():
                    with open(f"/proc/self/task/{tid}/status") as f:
                        line = next(l for l in f if l.startswith("SigBlk:"))
                    blocked.append(int(line.split()[1], 16))
                report["blocked"] = blocked
            report["after"] = caught()
        """,
        anyio_backend,
    )
    assert report["stopped"] == ["CallTimeout", "CpuTimeout", "cancelled", "ExecutionCancelled"]
    assert isinstance(report["kicks"], int) and report["kicks"] >= 1
    assert report["before"] is report["during"] is report["after"] is False
    assert report["python"] is True
    blocked = report["blocked"]
    assert isinstance(blocked, list) and len(blocked) == 1
    for sig in (signal.SIGRTMIN, signal.SIGINT, signal.SIGTERM, signal.SIGCHLD, signal.SIGRTMAX):
        assert blocked[0] >> (sig - 1) & 1, f"signal {sig} is not blocked on the vCPU thread"


# ---- any disposition, set at any time -------------------------------------------


@pytest.mark.parametrize("disposition", ["SIG_DFL", "SIG_IGN", "handler"])
def test_kicks_work_under_any_disposition(anyio_backend: AnyioBackend, disposition: str) -> None:
    report = run_child(
        f"""
        app_calls = []
        how = {disposition!r}
        def set_disposition():
            if how == "handler":
                signal.signal(SIG, lambda signum, frame: app_calls.append(signum))
            else:
                signal.signal(SIG, getattr(signal, how))

        async def main():
            set_disposition()  # before the first sandbox
            async with aionub.Sandbox.create(aionub.DEMO_GUEST) as sb:
                report["first"] = await every_way_to_stop(sb)
                # A library's save/restore through Python's signal module.
                old = signal.signal(SIG, lambda signum, frame: None)
                signal.signal(SIG, old)
                report["second"] = await every_way_to_stop(sb)
                report["kicks"] = sb.stats()["signals_sent"]
            async with aionub.Sandbox.create(aionub.DEMO_GUEST) as sb:
                set_disposition()  # after a sandbox exists
                report["third"] = await every_way_to_stop(sb)
            report["app_calls"] = app_calls
        """,
        anyio_backend,
    )
    for key in ("first", "second", "third"):
        assert report[key] == ["CallTimeout", "CpuTimeout", "cancelled", "ExecutionCancelled"], report
    assert isinstance(report["kicks"], int) and report["kicks"] >= 1
    assert report["app_calls"] == []  # no kick ever reached the application's handler


def test_disposition_flipped_by_another_thread_during_calls(anyio_backend: AnyioBackend) -> None:
    # Another thread keeps switching the signal between SIG_DFL and SIG_IGN
    # through C (installing SIG_IGN discards pending instances of the
    # signal): no call may end the process or run on.
    report = run_child(
        """
        async def main():
            stop = threading.Event()
            flips = [0]

            def flipper():
                while not stop.is_set():
                    libc.signal(SIG, SIG_IGN)
                    libc.signal(SIG, SIG_DFL)
                    flips[0] += 1

            thread = threading.Thread(target=flipper, daemon=True)
            thread.start()
            try:
                async with aionub.Sandbox.create(aionub.DEMO_GUEST) as sb:
                    rounds, worst = [], 0.0
                    for _ in range(10):
                        start = time.monotonic()
                        rounds.append(await every_way_to_stop(sb))
                        worst = max(worst, time.monotonic() - start)
                    report["rounds"] = rounds
                    report["worst_round"] = worst
                    report["still_adds"] = await sb.call("add", 2, 3)
            finally:
                stop.set()
                thread.join()
            report["flips"] = flips[0]
        """,
        anyio_backend,
    )
    rounds = report["rounds"]
    assert isinstance(rounds, list) and len(rounds) == 10
    assert all(r == ["CallTimeout", "CpuTimeout", "cancelled", "ExecutionCancelled"] for r in rounds), rounds
    assert report["still_adds"] == 5
    assert isinstance(report["flips"], int) and report["flips"] > 0
    # Four stops of ~20 ms each plus restores; a lost kick costs retry_delay.
    assert isinstance(report["worst_round"], float) and report["worst_round"] < 5.0


# ---- the application's own use of the signal ---------------------------------


# Counts the application's handler calls; `expect(n)` waits (with a
# deadline) for n of them. Python runs the handler on the main thread, so
# a kick that reached it would show up at the latest by the next
# raise_signal(), which runs the pending handlers before it returns.
_APP_HANDLER = """
app_calls = []

def app_handler(signum, frame):
    app_calls.append(signum)

async def send_foreign_signals(expected):
    os.kill(os.getpid(), SIG)   # process-directed (SI_USER)
    signal.raise_signal(SIG)    # thread-directed (SI_TKILL) at a non-vCPU thread
    with anyio.move_on_after(10):  # the parent checks the count
        while len(app_calls) < expected:
            await anyio.sleep(0.001)
"""


@pytest.mark.parametrize("when", ["before", "after"])
def test_application_handler_receives_its_signals_and_no_kicks(anyio_backend: AnyioBackend, when: str) -> None:
    report = run_child(
        _APP_HANDLER
        + f"""
async def main():
    if {when!r} == "before":
        signal.signal(SIG, app_handler)
    async with aionub.Sandbox.create(aionub.DEMO_GUEST) as sb1, aionub.Sandbox.create(
        aionub.DEMO_GUEST
    ) as sb2:
        if {when!r} == "after":
            signal.signal(SIG, app_handler)
        await send_foreign_signals(2)
        report["outcomes"] = await every_way_to_stop(sb1)
        await send_foreign_signals(4)
        report["outcomes"] += await every_way_to_stop(sb2)
        await send_foreign_signals(6)
        report["kicks"] = sb1.stats()["signals_sent"] + sb2.stats()["signals_sent"]
    report["app_calls"] = app_calls
    report["sig"] = int(SIG)
""",
        anyio_backend,
    )
    assert report["outcomes"] == ["CallTimeout", "CpuTimeout", "cancelled", "ExecutionCancelled"] * 2
    assert isinstance(report["kicks"], int) and report["kicks"] >= 2
    # Exactly the six foreign signals; none of the kicks.
    assert report["app_calls"] == [report["sig"]] * 6


def test_a_signal_aimed_at_a_vcpu_thread_is_harmless(anyio_backend: AnyioBackend) -> None:
    # Even under SIG_DFL (whose action would end the process), a signal the
    # application sends straight to a vCPU thread only interrupts KVM_RUN
    # once: the guest is re-entered and the call returns its result.
    report = run_child(
        """
        async def main():
            async with aionub.Sandbox.create(aionub.DEMO_GUEST) as sb:
                (tid,) = vcpu_thread_ids()
                sent = [0]

                def pester():
                    while not _native.lib.ab_interrupt_running(sb._ih):
                        time.sleep(0.0005)
                    for _ in range(20):
                        libc.syscall(234, os.getpid(), tid, SIG)  # tgkill
                        sent[0] += 1
                        time.sleep(0.002)

                thread = threading.Thread(target=pester, daemon=True)
                thread.start()
                report["fib"] = await sb.call("fib", 32)
                await anyio.to_thread.run_sync(thread.join)
                report["sent"] = sent[0]
                report["stats"] = sb.stats()
        """,
        anyio_backend,
    )
    assert report["fib"] == 2178309
    stats = report["stats"]
    assert isinstance(stats, dict)
    assert stats["cancellations"] == stats["timeouts"] == stats["cpu_timeouts"] == 0
    assert stats["stale_kicks"] >= 1  # the signals did interrupt KVM_RUN, and nothing else happened


# ---- nothing stays queued ----------------------------------------------------


def _queued_kicks(tid: int) -> bool:
    """Whether the kick signal is pending on thread ``tid`` (its SigPnd)."""
    with open(f"/proc/self/task/{tid}/status") as f:
        line = next(entry for entry in f if entry.startswith("SigPnd:"))
    return bool(int(line.split()[1], 16) >> (signal.SIGRTMIN - 1) & 1)


@pytest.mark.anyio
async def test_no_kick_stays_queued_after_a_stopped_call() -> None:
    # Each queued real-time signal counts against RLIMIT_SIGPENDING, so an
    # idle sandbox must not keep the kicks that stopped its last call.
    async with aionub.Sandbox.create(aionub.DEMO_GUEST) as sb:
        snap = await sb.snapshot()
        (tid,) = vcpu_thread_ids()

        async def settled() -> bool:
            with anyio.move_on_after(2):
                while _queued_kicks(tid):
                    await anyio.sleep(0.001)
            return not _queued_kicks(tid)

        with pytest.raises(aionub.CallTimeout):
            await sb.call("spin", timeout=0.02)
        assert await settled(), "the deadline's kick stayed queued"
        await sb.restore(snap)
        with pytest.raises(aionub.CpuTimeout):
            await sb.call("spin", cpu_timeout=0.02)
        assert await settled(), "the CPU budget's kick stayed queued"
        await sb.restore(snap)
        with anyio.move_on_after(0.02):
            await sb.call("spin")
        assert sb.poisoned and await settled(), "the cancellation's kick stayed queued"
        await sb.restore(snap)
        handle = sb.interrupt_handle()
        killer = threading.Thread(target=lambda: (time.sleep(0.02), handle.kill()))
        killer.start()
        with pytest.raises(aionub.ExecutionCancelled):
            await sb.call("spin")
        killer.join()
        assert await settled(), "the kill's kick stayed queued"
        assert sb.stats()["signals_sent"] >= 4


# ---- sig_rt_min_offset covers exactly SIGRTMIN..SIGRTMAX -------------------------


@pytest.mark.anyio
async def test_the_largest_offset_stops_the_guest() -> None:
    async with aionub.Sandbox.create(aionub.DEMO_GUEST, sig_rt_min_offset=MAX_OFFSET) as sb:
        with pytest.raises(aionub.CallTimeout):
            await sb.call("spin", timeout=0.05)
        assert sb.stats()["signals_sent"] >= 1
        handle = sb.interrupt_handle()
        assert handle.kill() is False  # nothing running: no signal


@pytest.mark.anyio
@pytest.mark.parametrize("offset", [MAX_OFFSET + 1, MAX_OFFSET + 2, 64, -1])
async def test_offset_outside_sigrtmin_to_sigrtmax_is_rejected(offset: int) -> None:
    message = rf"sig_rt_min_offset must be between 0 and {MAX_OFFSET} \(SIGRTMIN\.\.SIGRTMAX\), got {offset}"
    with pytest.raises(ValueError, match=message):
        aionub.SandboxConfig(sig_rt_min_offset=offset).validate()
    with pytest.raises(ValueError, match=message):
        await aionub.Sandbox.create(aionub.DEMO_GUEST, sig_rt_min_offset=offset)


@pytest.mark.parametrize(
    ("offset", "valid"), [(0, True), (MAX_OFFSET, True), (MAX_OFFSET + 1, False), (2**32 - 1, False)]
)
def test_native_validation_of_the_offset(offset: int, valid: bool) -> None:
    with open(aionub.DEMO_GUEST, "rb") as f:
        image = f.read()
    cfg = aionub.SandboxConfig().to_native()
    cfg.sig_rt_min_offset = offset
    buf = _native.ffi.new("char[]", 512)
    rc = _native.lib.ab_elf_validate(cfg, image, len(image), buf, 512)
    message = _native.ffi.string(buf).decode()
    if valid:
        assert rc == 0, message
    else:
        assert rc == -errno.EINVAL
        assert message == f"config: sig_rt_min_offset must be between 0 and {MAX_OFFSET}, got {offset}"
