"""Soak: timeouts and thread kills racing completions, for a long run.

    python scripts/soak_kills.py [--calls 1000000] [--sandboxes 50] [--loop asyncio|uvloop]

Every call is `fib(n)` with a random timeout (or none) while a thread kills
random sandboxes through their InterruptHandles. Each outcome must be the
right value, CallTimeout (never before its timeout) or ExecutionCancelled;
killed sandboxes are restored from a snapshot. Prints the accounting and
exits non-zero on any wrong result, spurious timeout, mismatch between the
library's counters and ours, or hang (a watchdog aborts after --max-seconds).
"""

from __future__ import annotations

import argparse
import asyncio
import faulthandler
import random
import sys
import threading
import time

import aionub

FIB = [0, 1]
for _ in range(40):
    FIB.append(FIB[-1] + FIB[-2])


async def soak(calls: int, sandboxes: int) -> dict[str, int]:
    tally = {"completed": 0, "timed_out": 0, "killed_by_timeout": 0, "cancelled_by_kill": 0,
             "wrong": 0, "spurious": 0, "kills_attempted": 0}
    handles: list[aionub.InterruptHandle] = []
    stop = threading.Event()

    def killer() -> None:
        rng = random.Random(99)
        while not stop.is_set():
            if handles:
                tally["kills_attempted"] += 1
                rng.choice(handles).kill()
            time.sleep(rng.uniform(0.0005, 0.005))

    per_sandbox = calls // sandboxes
    before = aionub.process_stats()

    async def worker(index: int) -> None:
        rng = random.Random(index)
        async with aionub.Sandbox.create(aionub.DEMO_GUEST, memory_size=4 * 1024 * 1024) as sb:
            snap = await sb.snapshot()
            handles.append(sb.interrupt_handle())
            for _ in range(per_sandbox):
                n = rng.randrange(5, 21)
                timeout = rng.choice((None, None, 0.0, 0.0002, 0.0005, 0.001, 0.003))
                start = time.monotonic()
                try:
                    value = await sb.call("fib", n, timeout=timeout)
                except aionub.CallTimeout:
                    tally["timed_out"] += 1
                    if timeout is None or time.monotonic() - start < timeout:
                        tally["spurious"] += 1
                    if sb.poisoned:
                        tally["killed_by_timeout"] += 1
                        await sb.restore(snap)
                    continue
                except aionub.ExecutionCancelled:
                    tally["cancelled_by_kill"] += 1
                    await sb.restore(snap)
                    continue
                tally["completed"] += 1
                tally["wrong"] += value != FIB[n]

    thread = threading.Thread(target=killer, daemon=True)
    thread.start()
    try:
        await asyncio.gather(*(worker(i) for i in range(sandboxes)))
    finally:
        stop.set()
        thread.join()
    after = aionub.process_stats()
    tally["calls"] = per_sandbox * sandboxes
    tally["lib_calls"] = after["calls"] - before["calls"]
    tally["lib_cancellations"] = after["cancellations"] - before["cancellations"]
    tally["lib_signals_sent"] = after["signals_sent"] - before["signals_sent"]
    tally["lib_stale_kicks"] = after["stale_kicks"] - before["stale_kicks"]
    return tally


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--calls", type=int, default=1_000_000)
    parser.add_argument("--sandboxes", type=int, default=50)
    parser.add_argument("--loop", choices=("asyncio", "uvloop"), default="asyncio")
    parser.add_argument("--max-seconds", type=float, default=3600, help="watchdog: abort (a hang) after this long")
    args = parser.parse_args()
    faulthandler.dump_traceback_later(args.max_seconds, exit=True)
    start = time.monotonic()
    if args.loop == "uvloop":
        import uvloop

        tally = uvloop.run(soak(args.calls, args.sandboxes))
    else:
        tally = asyncio.run(soak(args.calls, args.sandboxes))
    elapsed = time.monotonic() - start
    for key, value in tally.items():
        print(f"{key:>20}: {value}")
    print(f"{'seconds':>20}: {elapsed:.1f}  ({tally['calls'] / elapsed:,.0f} calls/s)")
    accounted = tally["completed"] + tally["timed_out"] + tally["cancelled_by_kill"]
    problems = []
    if accounted != tally["calls"] or tally["lib_calls"] != tally["calls"]:
        problems.append(f"accounting: {accounted} outcomes, library counted {tally['lib_calls']}, expected {tally['calls']}")
    if tally["lib_cancellations"] != tally["killed_by_timeout"] + tally["cancelled_by_kill"]:
        problems.append("the library's cancellations differ from the kills we saw")
    if tally["wrong"]:
        problems.append(f"{tally['wrong']} wrong results")
    if tally["spurious"]:
        problems.append(f"{tally['spurious']} spurious timeouts")
    for p in problems:
        print("FAIL:", p)
    print("OK" if not problems else "FAILED")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
