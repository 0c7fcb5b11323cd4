"""Aggregate noop calls/s over 64 sandboxes against raw C with 2 threads.

Per round, interleaved:

  raw C    floor.c `threads 2 N`: two threads, one VM each, back-to-back
           KVM_RUN round trips; calls/s over both (the machine has 2 CPUs,
           so this is the most round trips it can do)
  aionub   one event loop (uvloop, then asyncio) driving 64 sandboxes, one
           task per sandbox looping `await sb.call("noop")`; calls/s counted
           over a --seconds window that opens after a warm-up second

The target divides the median calls/s of aionub by the median of raw C.
Diagnostics: raw C with 64 threads (64 VMs on 2 CPUs, the same
over-subscription aionub has), how evenly the calls spread over the 64
sandboxes (min / max per sandbox), the CPU time the process used per
call (user and system), and how busy the event loop's thread was, with its
CPU time per call: one thread runs the Python side of every call, so
1 / (its CPU per call) bounds the calls/s of one event loop; the vCPU
threads' CPU time per call in and out of the guest (clock-tick resolution,
summed over the 64 threads); and the calls/s that the process's CPU time
per call allows on this machine's CPUs, next to raw C's CPU time per call.

    python benchmarks/bench_throughput.py            # about 45 s on 2 cores
    python benchmarks/bench_throughput.py --quick    # about 15 s
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import loops_available, median, require_kvm, run_on, target  # noqa: E402
from _floor import run_floor  # noqa: E402

import aionub  # noqa: E402

WARMUP_S = 1.0
TICK = os.sysconf("SC_CLK_TCK")


def vcpu_cpu_s() -> dict[str, float]:
    """CPU time of this process's vCPU threads, in seconds: user (which
    includes time in the guest), system, and guest alone. Clock-tick
    resolution: meaningful summed over many threads and seconds."""
    total = {"user": 0.0, "system": 0.0, "guest": 0.0}
    for tid in os.listdir("/proc/self/task"):
        try:
            with open(f"/proc/self/task/{tid}/stat") as f:
                stat = f.read()
        except OSError:
            continue
        name = stat[stat.index("(") + 1 : stat.rindex(")")]
        if name != "aionub-vcpu":
            continue
        fields = stat[stat.rindex(")") + 2 :].split()  # fields[0] is field 3 (state)
        total["user"] += int(fields[11]) / TICK
        total["system"] += int(fields[12]) / TICK
        total["guest"] += int(fields[40]) / TICK
    return total


async def aggregate(sandboxes: int, seconds: float) -> dict[str, float]:
    boxes = await asyncio.gather(*(aionub.Sandbox.create(aionub.DEMO_GUEST) for _ in range(sandboxes)))
    counts = [0] * sandboxes
    stop = False

    async def worker(i: int, sb: aionub.Sandbox) -> None:
        call = sb.call
        while not stop:
            await call("noop")
            counts[i] += 1

    try:
        tasks = [asyncio.create_task(worker(i, sb)) for i, sb in enumerate(boxes)]
        await asyncio.sleep(WARMUP_S)
        before = list(counts)
        cpu0, t0, th0, v0 = os.times(), time.perf_counter(), time.thread_time(), vcpu_cpu_s()
        await asyncio.sleep(seconds)
        after = list(counts)
        cpu1, t1, th1, v1 = os.times(), time.perf_counter(), time.thread_time(), vcpu_cpu_s()
        stop = True
        await asyncio.gather(*tasks)
    finally:
        await asyncio.gather(*(sb.aclose() for sb in boxes))
    per_box = [a - b for a, b in zip(after, before)]
    total = sum(per_box)
    return {
        "calls_per_s": total / (t1 - t0),
        "min_share": min(per_box) / (total / sandboxes),
        "max_share": max(per_box) / (total / sandboxes),
        "user_us_per_call": (cpu1.user - cpu0.user) * 1e6 / total,
        "sys_us_per_call": (cpu1.system - cpu0.system) * 1e6 / total,
        "loop_us_per_call": (th1 - th0) * 1e6 / total,
        "vcpu_guest_us_per_call": (v1["guest"] - v0["guest"]) * 1e6 / total,
        "vcpu_host_us_per_call": ((v1["user"] - v0["user"]) - (v1["guest"] - v0["guest"])
                                  + (v1["system"] - v0["system"])) * 1e6 / total,
        "loop_busy": (th1 - th0) / (t1 - t0),
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sandboxes", type=int, default=64, help="sandboxes (default 64)")
    parser.add_argument("--seconds", type=float, default=3.0, help="measured window per loop and round (default 3)")
    parser.add_argument("--rounds", type=int, default=3, help="interleaved rounds (default 3)")
    parser.add_argument("--quick", action="store_true", help="1 s windows, 2 rounds")
    opts = parser.parse_args()
    if opts.quick:
        opts.seconds, opts.rounds = 1.0, 2
    if opts.sandboxes < 1 or opts.rounds < 1 or opts.seconds <= 0:
        parser.error("--sandboxes, --rounds and --seconds must be positive")
    require_kvm()
    loops = loops_available()
    # Size the raw C runs to last about as long as one aionub window.
    raw_n = max(2000, int(opts.seconds * 35_000))

    res: dict[str, list[float]] = {}
    extra: dict[str, list[dict[str, float]]] = {}
    started = time.monotonic()
    for r in range(opts.rounds):
        raw2 = run_floor("threads", 2, raw_n)
        res.setdefault("raw2", []).append(raw2["calls_per_s"])
        res.setdefault("raw2_cpu", []).append(raw2["cpu_us_per_call"])
        res.setdefault("raw64", []).append(
            run_floor("threads", 64, max(200, raw_n // 32))["calls_per_s"])
        for loop in loops:
            out = run_on(loop, lambda: aggregate(opts.sandboxes, opts.seconds))
            res.setdefault(loop, []).append(out["calls_per_s"])
            extra.setdefault(loop, []).append(out)
        print(f"round {r + 1}: " + ", ".join(f"{k} {v[-1]:,.0f}" for k, v in res.items()) + " calls/s",
              flush=True)
    elapsed = time.monotonic() - started

    med = {k: median(v) for k, v in res.items()}
    ncpu = len(os.sched_getaffinity(0))
    raw_cpu = med["raw2_cpu"]
    print(f"\ncalls/s, median of {opts.rounds} rounds ({elapsed:.0f} s):")
    print(f"  {'raw C, 2 threads (one VM each)':<36} {med['raw2']:>10,.0f}")
    print(f"  {'raw C, 64 threads (one VM each)':<36} {med['raw64']:>10,.0f}")
    for loop in loops:
        e = extra[loop]
        label = f"aionub, {opts.sandboxes} sandboxes, {loop}"
        print(f"  {label:<36} {med[loop]:>10,.0f}\n"
              f"  {'':<36} per sandbox {median(x['min_share'] for x in e):.2f}-{median(x['max_share'] for x in e):.2f}"
              f" x the mean; CPU per call: user {median(x['user_us_per_call'] for x in e):.1f} µs,"
              f" system {median(x['sys_us_per_call'] for x in e):.1f} µs\n"
              f"  {'':<36} event loop thread: {median(x['loop_busy'] for x in e):.0%} busy,"
              f" {median(x['loop_us_per_call'] for x in e):.1f} µs of its CPU per call"
              f" (alone it could drive {1e6 / median(x['loop_us_per_call'] for x in e):,.0f} calls/s)\n"
              f"  {'':<36} vCPU threads per call: {median(x['vcpu_guest_us_per_call'] for x in e):.1f} µs"
              f" in the guest, {median(x['vcpu_host_us_per_call'] for x in e):.1f} µs on the host")
        cpu = median(x["user_us_per_call"] + x["sys_us_per_call"] for x in e)
        print(f"  {'':<36} CPU per call {cpu:.1f} µs vs raw C's {raw_cpu:.1f} µs: on {ncpu} CPUs"
              f" at most {ncpu * 1e6 / cpu:,.0f} calls/s, {raw_cpu / cpu:.2f} x raw C")
    print()
    for loop in loops:
        target(f"aggregate calls/s, {opts.sandboxes} sandboxes on {loop}, ÷ raw C with 2 threads",
               f"{med[loop] / med['raw2']:.2f}", "≥ 0.6")
    return 0


if __name__ == "__main__":
    sys.exit(main())
