"""`await sb.call("noop")` against the raw-KVM floors, in one run.

Runs, on this machine and in this order, interleaved over several rounds so
that machine noise hits both sides alike:
  - the raw C round trip from CPL3 (one KVM_RUN per iteration, same thread),
  - the raw C thread-per-vCPU round trip (futex request, eventfd completion),
  - aionub noop calls on asyncio and on uvloop,
and prints medians and ratios. Ends with one line per target.

    python benchmarks/bench_call.py [--calls N] [--rounds R]
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import aionub  # noqa: E402
from _floor import run_floor  # noqa: E402


async def noop_samples(calls: int) -> list[float]:
    """Per-call latency (µs) of sequential noop calls on one sandbox."""
    async with aionub.Sandbox.create(aionub.DEMO_GUEST) as sb:
        for _ in range(min(calls, 1000)):  # warm-up
            await sb.call("noop")
        samples = []
        clock = time.perf_counter_ns
        for _ in range(calls):
            start = clock()
            await sb.call("noop")
            samples.append((clock() - start) / 1000)
        return samples


def run_on(loop_name: str, calls: int) -> float:
    if loop_name == "uvloop":
        import uvloop

        samples = uvloop.run(noop_samples(calls))
    else:
        samples = asyncio.run(noop_samples(calls))
    return statistics.median(samples)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--calls", type=int, default=5000, help="calls per measurement (default 5000)")
    parser.add_argument("--rounds", type=int, default=3, help="interleaved rounds (default 3)")
    args = parser.parse_args()

    results: dict[str, list[float]] = {"raw": [], "raw_thread": [], "asyncio": [], "uvloop": []}
    for r in range(args.rounds):
        results["raw"].append(run_floor("roundtrip", args.calls)["p50_us"])
        results["raw_thread"].append(run_floor("roundtrip-thread", args.calls)["p50_us"])
        results["asyncio"].append(run_on("asyncio", args.calls))
        results["uvloop"].append(run_on("uvloop", args.calls))
        print(f"round {r + 1}: " + ", ".join(f"{k} {v[-1]:.1f} µs" for k, v in results.items()), flush=True)

    med = {k: statistics.median(v) for k, v in results.items()}
    print()
    print(f"p50 of {args.calls} calls, median of {args.rounds} rounds:")
    print(f"  raw C KVM_RUN round trip (CPL3, same thread)   {med['raw']:8.1f} µs")
    print(f"  raw C thread-per-vCPU round trip (futex+eventfd) {med['raw_thread']:6.1f} µs")
    print(f"  aionub noop, asyncio                            {med['asyncio']:8.1f} µs")
    print(f"  aionub noop, uvloop                             {med['uvloop']:8.1f} µs")
    print()
    print(f"noop on uvloop ÷ raw round trip: {med['uvloop'] / med['raw']:.2f} (≤ 2.0)")
    print(f"noop on asyncio ÷ raw round trip: {med['asyncio'] / med['raw']:.2f} (≤ 2.5)")
    print(f"noop on asyncio ÷ raw thread-per-vCPU round trip: {med['asyncio'] / med['raw_thread']:.2f} (floor of this design: 1.0)")


if __name__ == "__main__":
    main()
