"""Where the vCPU threads run: `placement="colocate"` against the
default (`"scheduler"`), everything unpinned, in one run.

Per round, interleaved, on asyncio (and uvloop if installed):

  noop        p50 of sequential `await sb.call("noop")`, each placement,
              and the raw C thread-per-vCPU round trip on one CPU (floor.c
              `roundtrip-thread` with the process pinned to one CPU): the
              floor a call reaches when its two threads share a CPU
  throughput  calls/s of 64 sandboxes driven by one loop (bench_throughput's
              workload), each placement
  fib(30)     p50 of `await sb.call("fib", 30)` (about 10 ms), each placement
  ticker      while one `spin()` call runs for 0.3 s, a task on the same
              loop sleeps 1 ms at a time; its lateness (p50, p99) measures
              how responsive the loop stays during a long call

The targets: with colocate, noop p50 ≤ 1.5x the one-CPU floor; the
throughput, fib(30) and the ticker's lateness no worse than with the
default placement (ratios near 1; throughput and fib as "follow ÷ default"
speed, the ticker as lateness).

    python benchmarks/bench_placement.py           # about 60 s
    python benchmarks/bench_placement.py --quick   # about 20 s
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import loops_available, median, one_cpu, percentile, ratio, require_kvm, run_on, target
from _floor import run_floor

import aionub

PLACEMENTS = ("scheduler", "colocate")


async def noop_p50(calls: int, placement: str) -> float:
    clock = time.perf_counter_ns
    samples = []
    async with aionub.Sandbox.create(aionub.DEMO_GUEST, placement=placement) as sb:
        for _ in range(min(calls, 500)):
            await sb.call("noop")
        for _ in range(calls):
            t0 = clock()
            await sb.call("noop")
            samples.append((clock() - t0) / 1000)
    return percentile(samples, 0.5)


async def throughput(sandboxes: int, seconds: float, placement: str) -> float:
    boxes = await asyncio.gather(
        *(aionub.Sandbox.create(aionub.DEMO_GUEST, placement=placement) for _ in range(sandboxes))
    )
    count = 0
    stop = False

    async def worker(sb: aionub.Sandbox) -> None:
        nonlocal count
        while not stop:
            await sb.call("noop")
            count += 1

    try:
        tasks = [asyncio.create_task(worker(sb)) for sb in boxes]
        await asyncio.sleep(0.5)
        c0, t0 = count, time.perf_counter()
        await asyncio.sleep(seconds)
        c1, t1 = count, time.perf_counter()
        stop = True
        await asyncio.gather(*tasks)
    finally:
        await asyncio.gather(*(sb.aclose() for sb in boxes))
    return (c1 - c0) / (t1 - t0)


async def fib_p50(reps: int, placement: str) -> float:
    clock = time.perf_counter_ns
    samples = []
    async with aionub.Sandbox.create(aionub.DEMO_GUEST, placement=placement) as sb:
        await sb.call("fib", 30)
        for _ in range(reps):
            t0 = clock()
            await sb.call("fib", 30)
            samples.append((clock() - t0) / 1000)
    return percentile(samples, 0.5)


async def ticker_lateness(placement: str) -> tuple[float, float]:
    """Lateness (µs) of 1 ms sleeps while a call spins for 0.3 s."""
    late: list[float] = []
    async with aionub.Sandbox.create(aionub.DEMO_GUEST, placement=placement) as sb:
        await sb.call("noop")  # the vCPU thread has its placement
        done = False

        async def ticker() -> None:
            while not done:
                t0 = time.perf_counter()
                await asyncio.sleep(0.001)
                late.append((time.perf_counter() - t0 - 0.001) * 1e6)

        task = asyncio.create_task(ticker())
        try:
            await sb.call("spin", timeout=0.3)
        except aionub.CallTimeout:
            pass
        done = True
        await task
    return percentile(late, 0.5), percentile(late, 0.99)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--calls", type=int, default=3000)
    parser.add_argument("--quick", action="store_true", help="1 round, fewer calls")
    opts = parser.parse_args()
    if opts.quick:
        opts.rounds, opts.calls = 1, 1000
    require_kvm()
    if len(os.sched_getaffinity(0)) < 2:
        print("placement needs at least two CPUs to matter; this process has one")
        return 0
    loops = loops_available()
    res: dict[str, list[float]] = {}

    def add(key: str, value: float) -> None:
        res.setdefault(key, []).append(value)

    for r in range(opts.rounds):
        with one_cpu():
            add("floor_1cpu", run_floor("roundtrip-thread", opts.calls)["p50_us"])
        for loop in loops:
            for p in PLACEMENTS:
                add(f"noop_{loop}_{p}", run_on(loop, lambda p=p: noop_p50(opts.calls, p)))
                add(f"tput_{loop}_{p}", run_on(loop, lambda p=p: throughput(64, 2.0 if not opts.quick else 1.0, p)))
                add(f"fib_{loop}_{p}", run_on(loop, lambda p=p: fib_p50(20 if not opts.quick else 8, p)))
                p50, p99 = run_on(loop, lambda p=p: ticker_lateness(p))
                add(f"tick50_{loop}_{p}", p50)
                add(f"tick99_{loop}_{p}", p99)
        print(f"round {r + 1}: " + ", ".join(f"{k} {v[-1]:.1f}" for k, v in res.items()), flush=True)

    med = {k: median(v) for k, v in res.items()}
    print(f"\nmedian of {opts.rounds} rounds:")
    print(f"  raw C thread-per-vCPU round trip on 1 CPU: {med['floor_1cpu']:.1f} µs")
    print(f"  {'':<22} {'noop p50':>10} {'64-sb calls/s':>14} {'fib(30) p50':>12} {'ticker p50':>11} {'ticker p99':>11}")
    for loop in loops:
        for p in PLACEMENTS:
            print(f"  {loop + ' ' + p:<22} {med[f'noop_{loop}_{p}']:>8.1f}µs {med[f'tput_{loop}_{p}']:>14,.0f}"
                  f" {med[f'fib_{loop}_{p}'] / 1000:>10.2f}ms {med[f'tick50_{loop}_{p}']:>9.0f}µs"
                  f" {med[f'tick99_{loop}_{p}']:>9.0f}µs")
    print()
    for loop in loops:
        for p in PLACEMENTS:
            target(f"noop on {loop}, unpinned, placement={p} ÷ raw C thread round trip on 1 CPU",
                   ratio(med[f"noop_{loop}_{p}"], med["floor_1cpu"]), "≤ 1.5")
        target(f"64-sandbox calls/s on {loop}, colocate ÷ scheduler",
               ratio(med[f"tput_{loop}_colocate"], med[f"tput_{loop}_scheduler"]), "≥ 1.0, not worse")
        target(f"fib(30) speed on {loop}, colocate ÷ scheduler",
               ratio(med[f"fib_{loop}_scheduler"], med[f"fib_{loop}_colocate"]), "≥ 1.0, not worse")
        target(f"ticker lateness p99 during a long call on {loop}, colocate ÷ scheduler",
               ratio(med[f"tick99_{loop}_colocate"], med[f"tick99_{loop}_scheduler"]), "≤ 1.0, not worse")
    return 0


if __name__ == "__main__":
    sys.exit(main())
