"""What debugging costs, against plain calls measured in the same run.

- **Breakpoint round trip**: a call of the demo guest's `add` with a
  breakpoint at its entry, served the way gdb serves one (stop; remove the
  int3; single-step; put it back; continue), ÷ the same call without a
  breakpoint. Each hit is two debug stops (the int3's #BP and the step's #DB),
  each going through the CPL0 stub (emulated here) and a register rewrite.
- **Debug interrupt without a debugger**: `fib(32)` while another thread
  calls `kill_from_debugger()` as soon as the guest runs (the call pauses and
  resumes) ÷ the same call undisturbed.
- **Crash dump**: a faulting call with `core_dir=` ÷ the same faulting call
  without (the dump of the default 8 MiB sandbox is written before the
  exception is raised).

Samples alternate between the two sides of each ratio; medians are shown.

    python benchmarks/bench_debug.py            # about 10 s on 2 cores
    python benchmarks/bench_debug.py --quick
"""

from __future__ import annotations

import argparse
import asyncio
import tempfile
import threading
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import fmt_us, median, require_kvm, target  # noqa: E402

import aionub  # noqa: E402
from aionub import _native  # noqa: E402
from aionub._debug import Action  # noqa: E402
from aionub._gdb import GdbServer  # noqa: E402


async def breakpoint_pairs(reps: int) -> tuple[list[float], list[float]]:
    plain: list[float] = []
    with_bp: list[float] = []
    async with aionub.Sandbox.create(aionub.DEMO_GUEST, debug=True) as sb:
        server = GdbServer(sb)
        target = server.target
        target.attach()
        address = target.function_address(Path(aionub.DEMO_GUEST).read_bytes(), "add")

        async def debugger() -> None:
            # What gdb does at each hit of a breakpoint it wants to keep.
            while True:
                await target.wait_stop()
                target.remove_breakpoint(address)
                target.resume(Action.STEP)
                await target.wait_stop()
                target.insert_breakpoint(address)
                target.resume(Action.CONTINUE)

        task = asyncio.create_task(debugger())
        for _ in range(20):
            await sb.call("add", 1, 2)
        for _ in range(reps):
            t = time.perf_counter()
            await sb.call("add", 1, 2)
            plain.append(time.perf_counter() - t)
            target.insert_breakpoint(address)
            t = time.perf_counter()
            assert await sb.call("add", 1, 2) == 3
            with_bp.append(time.perf_counter() - t)
            target.remove_breakpoint(address)
        task.cancel()
        target.detach()
    return plain, with_bp


async def interrupt_pairs(reps: int) -> tuple[list[float], list[float]]:
    plain: list[float] = []
    paused: list[float] = []
    async with aionub.Sandbox.create(aionub.DEMO_GUEST) as sb:
        handle = sb.interrupt_handle()
        for _ in range(reps):
            t = time.perf_counter()
            await sb.call("fib", 32)
            plain.append(time.perf_counter() - t)

            done = threading.Event()
            hits: list[bool] = []

            def pause() -> None:
                while not done.is_set():
                    if _native.lib.ab_interrupt_running(sb._ih):
                        hits.append(handle.kill_from_debugger())
                        return
                    time.sleep(0.00005)

            thread = threading.Thread(target=pause)
            thread.start()
            t = time.perf_counter()
            await sb.call("fib", 32)
            elapsed = time.perf_counter() - t
            done.set()
            thread.join()
            if hits == [True]:  # the guest was paused (not finished first)
                paused.append(elapsed)
    return plain, paused


async def dump_pairs(reps: int) -> tuple[list[float], list[float], int]:
    plain: list[float] = []
    dumped: list[float] = []
    size = 0
    with tempfile.TemporaryDirectory() as directory:
        for _ in range(reps):
            for out, core_dir in ((plain, None), (dumped, directory)):
                async with aionub.Sandbox.create(aionub.DEMO_GUEST, core_dir=core_dir) as sb:
                    t = time.perf_counter()
                    try:
                        await sb.call("fault", "read_null")
                    except aionub.GuestFault as exc:
                        out.append(time.perf_counter() - t)
                        core = getattr(exc, "core_file", None)
                        if core is not None:
                            size = Path(core).stat().st_size
                            Path(core).unlink()
    return plain, dumped, size


async def main(reps: int) -> None:
    plain, with_bp = await breakpoint_pairs(reps)
    print(f"add() call: {fmt_us(median(plain) * 1e6)}; with a kept breakpoint (2 stops): {fmt_us(median(with_bp) * 1e6)}")
    stop = (median(with_bp) - median(plain)) / 2
    plain_i, paused = await interrupt_pairs(max(5, reps // 20))
    print(f"fib(32): {fmt_us(median(plain_i) * 1e6)}; paused once by kill_from_debugger: {fmt_us(median(paused) * 1e6)}")
    plain_d, dumped, size = await dump_pairs(max(3, reps // 40))
    print(f"faulting call: {fmt_us(median(plain_d) * 1e6)}; with a {size >> 20} MiB crash dump: {fmt_us(median(dumped) * 1e6)}")
    target("breakpoint hit served like gdb ÷ plain call", f"{median(with_bp) / median(plain):.1f}x",
           "informational")
    target("one debug stop (stub + rewrite + resume)", fmt_us(stop * 1e6), "informational")
    target("call paused by a debug interrupt ÷ undisturbed", f"{median(paused) / median(plain_i):.2f}x",
           "close to 1: the pause is invisible")
    target("faulting call with crash dump ÷ without", f"{median(dumped) / median(plain_d):.1f}x", "informational")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="fewer samples")
    args = parser.parse_args()
    require_kvm()
    asyncio.run(main(40 if args.quick else 200))
