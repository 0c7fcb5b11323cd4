"""Print the raw KVM floors of this machine.

Runs every subcommand of ``floor.c`` (built on demand) a few times and prints
the median of each figure over the repeats. These are the numbers every aionub
benchmark is compared with; absolute values on shared machines are noisy, so
look at them next to each other rather than on their own.

    python benchmarks/bench_floor_selftest.py            # about 20 s on 2 cores
    python benchmarks/bench_floor_selftest.py --scale 0.2 --repeat 1
    python benchmarks/bench_floor_selftest.py --json     # one JSON object
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import one_cpu  # noqa: E402
from _floor import build_floor, run_floor  # noqa: E402

# (label, subcommand, args at scale 1.0 (the last one is the count N), pinned)
# "pinned" runs the program with its CPU affinity reduced to one CPU: the
# vCPU thread and the caller then share a CPU, so a wake-up is a context switch
# instead of a cross-CPU wake-up of an idle CPU (which, inside a VM, is an IPI
# through the outer hypervisor).
RUNS = [
    ("roundtrip", "roundtrip", (50_000,), False),
    ("roundtrip-thread", "roundtrip-thread", (20_000,), False),
    ("roundtrip-thread 1cpu", "roundtrip-thread", (20_000,), True),
    ("threads 1", "threads", (1, 20_000), False),
    ("threads 2", "threads", (2, 20_000), False),
    ("threads 4", "threads", (4, 10_000), False),
    ("create", "create", (300,), False),
    ("kill", "kill", (300,), False),
]

LATENCY_FIELDS = ("p50_us", "p90_us", "p99_us", "mean_us")


def scaled(args: tuple[int, ...], scale: float) -> tuple[int, ...]:
    *fixed, count = args
    return (*fixed, max(1, round(count * scale)))


def median_of(results: list[dict]) -> dict:
    """Field-wise median over repeated runs of one subcommand."""
    merged = dict(results[0])
    for key, value in results[0].items():
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            merged[key] = statistics.median(r[key] for r in results)
    if "max_signals" in merged:  # a worst case: keep the worst
        merged["max_signals"] = max(r["max_signals"] for r in results)
    return merged


def describe(label: str, r: dict) -> str:
    if r.get("name") == "aggregate":
        return (
            f"{label:<22} {r['calls_per_s']:>11,.0f} calls/s in total "
            f"({r['per_thread_call_us']:.1f} us per call per thread)"
        )
    line = f"{label:<22} n={r['n']:<7}" + "".join(
        f" {f[:-3]}={r[f]:>8.1f}" for f in LATENCY_FIELDS
    ) + "  us"
    if r["name"] == "create":
        line += (
            f"\n{'':<22} setup p50={r['setup_p50_us']:.1f}  first entry "
            f"p50={r['first_entry_p50_us']:.1f}  teardown p50={r['teardown_p50_us']:.1f}"
            f"  us  ({r['mem_mib']} MiB)"
        )
    if r["name"] == "kill":
        line += (
            f"\n{'':<22} signals per kill: mean {r['mean_signals']:.2f}, "
            f"max {r['max_signals']}"
        )
    return line


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--scale", type=float, default=1.0, help="multiply every count N (default 1.0)"
    )
    parser.add_argument(
        "--repeat", type=int, default=3, help="runs per subcommand; medians are shown"
    )
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    opts = parser.parse_args()
    if opts.scale <= 0 or opts.repeat < 1:
        parser.error("--scale must be > 0 and --repeat >= 1")
    if not os.path.exists("/dev/kvm"):
        print("floor: /dev/kvm does not exist on this machine; nothing to measure",
              file=sys.stderr)
        return 2

    build_floor()
    started = time.monotonic()
    report: dict[str, dict] = {}
    for label, sub, args, pinned in RUNS:
        if pinned and not hasattr(os, "sched_setaffinity"):
            continue
        argv = scaled(args, opts.scale)
        with one_cpu() if pinned else contextlib.nullcontext():
            results = [run_floor(sub, *argv) for _ in range(opts.repeat)]
        report[label] = median_of(results)
        if not opts.json:
            print(describe(label, report[label]), flush=True)
    elapsed = time.monotonic() - started

    rt, rtt = report["roundtrip"], report["roundtrip-thread"]
    derived = {
        "thread_hop_p50_us": rtt["p50_us"] - rt["p50_us"],
        "thread_vs_direct_p50": rtt["p50_us"] / rt["p50_us"],
        "scaling_2_threads": report["threads 2"]["calls_per_s"]
        / report["threads 1"]["calls_per_s"],
    }
    if "roundtrip-thread 1cpu" in report:
        derived["thread_hop_1cpu_p50_us"] = (
            report["roundtrip-thread 1cpu"]["p50_us"] - rt["p50_us"]
        )
    if opts.json:
        print(json.dumps({"repeat": opts.repeat, "scale": opts.scale,
                          "results": report, "derived": derived}))
    else:
        print(
            f"\nthread hop (futex request + eventfd completion) adds "
            f"{derived['thread_hop_p50_us']:.1f} us at p50 "
            f"({derived['thread_vs_direct_p50']:.2f}x the direct round trip)"
        )
        if "thread_hop_1cpu_p50_us" in derived:
            print(
                f"  ... and {derived['thread_hop_1cpu_p50_us']:.1f} us when both "
                f"threads share one CPU"
            )
        print(
            f"2 threads give {derived['scaling_2_threads']:.2f}x the calls/s of 1."
        )
        print(f"medians of {opts.repeat} run(s) per line; {elapsed:.1f} s in total, "
              f"{os.cpu_count()} CPUs")
    return 0


if __name__ == "__main__":
    sys.exit(main())
