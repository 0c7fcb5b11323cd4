"""The kick signal (SIGRTMIN + sig_rt_min_offset) is not fragile: a handler
replaced behind aionub's back (SIG_DFL, SIG_IGN, an application's own) is
found and re-installed before a kick relies on it; signals that are not
aionub's kicks reach the handler the application had installed; and the
offset is validated against the signals that exist. docs/cancellation.md,
"The kick signal", states the contract.

The scenarios that could kill or hang the process when broken run in a
child process with a deadline, so a regression fails the test instead of
taking pytest down; so do those that need a process in which no sandbox
was ever created."""

from __future__ import annotations

import errno
import json
import signal
import subprocess
import sys
import textwrap

import pytest

import aionub
from aionub import _native

AnyioBackend = tuple[str, dict[str, object]]

MAX_OFFSET = signal.SIGRTMAX - signal.SIGRTMIN
CHILD_DEADLINE = 60.0  # seconds; a sound child needs one or two

# Shared by every child: the event loop to use comes from the anyio_backend
# fixture; the child reports a JSON object on its last line of output.
_PRELUDE = """\
import json, os, signal, sys, threading, time
import anyio
import aionub
from aionub import _native

backend, backend_options = sys.argv[1], json.loads(sys.argv[2])
SIG = signal.SIGRTMIN
report = {}

def reinstalls():
    return aionub.process_stats().get("handler_reinstalls", 0)

async def spin_until_timeout(sb):
    try:
        await sb.call("spin", timeout=0.05)
    except aionub.CallTimeout:
        return "CallTimeout"
    return "returned"
"""
_EPILOGUE = """
anyio.run(main, backend=backend, backend_options=backend_options)
print(json.dumps(report), flush=True)
"""


def run_child(body: str, anyio_backend: AnyioBackend) -> dict[str, object]:
    name, options = anyio_backend
    script = _PRELUDE + textwrap.dedent(body) + _EPILOGUE
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


# ---- (a) SIG_DFL restored by a save/restore through Python's signal module -------


def test_handler_restored_to_sig_dfl_is_reinstalled(anyio_backend: AnyioBackend) -> None:
    report = run_child(
        """
        async def main():
            async with aionub.Sandbox.create(aionub.DEMO_GUEST) as sb1, aionub.Sandbox.create(
                aionub.DEMO_GUEST
            ) as sb2:
                rounds = []
                for sb in (sb1, sb2):
                    # A library borrows the signal and puts back what Python's
                    # table says was there: SIG_DFL, which would kill the process.
                    old = signal.signal(SIG, lambda signum, frame: None)
                    signal.signal(SIG, old)
                    before = reinstalls()
                    outcome = await spin_until_timeout(sb)
                    rounds.append({
                        "restored_sig_dfl": old == signal.SIG_DFL,
                        "outcome": outcome,
                        "signals": sb.stats()["signals_sent"],
                        "reinstalls": reinstalls() - before,
                    })
                report["rounds"] = rounds
        """,
        anyio_backend,
    )
    rounds = report["rounds"]
    assert isinstance(rounds, list)
    for r in rounds:
        assert r["restored_sig_dfl"]
        assert r["outcome"] == "CallTimeout"
        # Re-installed once, before the first signal; none if the timeout
        # stopped the guest before it ran (CANCEL seen at T2: no signal).
        assert r["reinstalls"] == (1 if r["signals"] else 0), rounds
    assert any(r["signals"] for r in rounds), rounds


# ---- (b) SIG_IGN: the signal would be discarded and the guest never stopped ------


def test_ignored_signal_still_stops_the_guest(anyio_backend: AnyioBackend) -> None:
    report = run_child(
        """
        async def main():
            async with aionub.Sandbox.create(aionub.DEMO_GUEST) as sb1, aionub.Sandbox.create(
                aionub.DEMO_GUEST
            ) as sb2:
                # The event loop's kill protocol (timeout).
                signal.signal(SIG, signal.SIG_IGN)
                before = reinstalls()
                report["timeout"] = await spin_until_timeout(sb1)
                report["timeout_signals"] = sb1.stats()["signals_sent"]
                report["timeout_reinstalls"] = reinstalls() - before
                # The blocking InterruptHandle.kill() of another thread.
                signal.signal(SIG, signal.SIG_IGN)
                before = reinstalls()
                handle = sb2.interrupt_handle()

                def killer():
                    # Once the guest runs, kill() must signal it (and return).
                    while not _native.lib.ab_interrupt_running(sb2._ih):
                        time.sleep(0.001)
                    report["kill_signalled"] = handle.kill()

                thread = threading.Thread(target=killer, daemon=True)
                thread.start()
                try:
                    await sb2.call("spin")
                    report["kill"] = "returned"
                except aionub.ExecutionCancelled:
                    report["kill"] = "ExecutionCancelled"
                await anyio.to_thread.run_sync(thread.join)
                report["kill_reinstalls"] = reinstalls() - before
        """,
        anyio_backend,
    )
    assert report["timeout"] == "CallTimeout"
    # (None if the timeout stopped the guest before it ran: no signal.)
    assert report["timeout_reinstalls"] == (1 if report["timeout_signals"] else 0)
    assert report["kill"] == "ExecutionCancelled"
    assert report.get("kill_signalled") is True
    assert report["kill_reinstalls"] == 1


# ---- (c), (d) an application's own handler keeps its signals, not our kicks ------

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


def test_application_handler_installed_before_the_first_sandbox_is_chained(anyio_backend: AnyioBackend) -> None:
    report = run_child(
        _APP_HANDLER
        + """
signal.signal(SIG, app_handler)  # before aionub installs its handler

async def main():
    async with aionub.Sandbox.create(aionub.DEMO_GUEST) as sb1, aionub.Sandbox.create(
        aionub.DEMO_GUEST
    ) as sb2:
        await send_foreign_signals(2)
        report["outcomes"] = [await spin_until_timeout(sb) for sb in (sb1, sb2)]
        report["kicks"] = sb1.stats()["signals_sent"] + sb2.stats()["signals_sent"]
        await send_foreign_signals(4)
    report["app_calls"] = app_calls
    report["sig"] = int(SIG)
""",
        anyio_backend,
    )
    assert report["outcomes"] == ["CallTimeout", "CallTimeout"]
    assert isinstance(report["kicks"], int) and report["kicks"] >= 1
    # Exactly the four foreign signals; none of the kicks.
    assert report["app_calls"] == [report["sig"]] * 4


def test_application_handler_installed_after_a_sandbox_is_chained(anyio_backend: AnyioBackend) -> None:
    report = run_child(
        _APP_HANDLER
        + """
async def main():
    async with aionub.Sandbox.create(aionub.DEMO_GUEST) as sb1, aionub.Sandbox.create(
        aionub.DEMO_GUEST
    ) as sb2:
        before = reinstalls()
        signal.signal(SIG, app_handler)  # replaces aionub's handler
        await send_foreign_signals(2)    # straight to the application's handler
        report["outcomes"] = [await spin_until_timeout(sb1)]   # re-installs, then kicks
        await send_foreign_signals(4)    # through aionub's handler, chained
        report["outcomes"].append(await spin_until_timeout(sb2))
        await send_foreign_signals(6)
        report["kicks"] = sb1.stats()["signals_sent"] + sb2.stats()["signals_sent"]
        report["reinstalls"] = reinstalls() - before
    report["app_calls"] = app_calls
    report["sig"] = int(SIG)
""",
        anyio_backend,
    )
    assert report["outcomes"] == ["CallTimeout", "CallTimeout"]
    assert isinstance(report["kicks"], int) and report["kicks"] >= 1
    assert report["app_calls"] == [report["sig"]] * 6
    assert report["reinstalls"] == 1  # at the first kick signal


def test_foreign_signal_without_a_previous_handler_is_ignored(anyio_backend: AnyioBackend) -> None:
    # SIG_DFL was installed before aionub's handler: a foreign signal is
    # ignored (not the default action, which would end the process), and
    # kicks keep working.
    report = run_child(
        """
async def main():
    async with aionub.Sandbox.create(aionub.DEMO_GUEST) as sb:
        os.kill(os.getpid(), SIG)
        signal.raise_signal(SIG)
        report["outcome"] = await spin_until_timeout(sb)
""",
        anyio_backend,
    )
    assert report["outcome"] == "CallTimeout"


def test_process_stats_count_handler_reinstalls() -> None:
    stats = aionub.process_stats()
    assert "handler_reinstalls" in stats
    assert isinstance(stats["handler_reinstalls"], int) and stats["handler_reinstalls"] >= 0


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
