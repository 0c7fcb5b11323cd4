"""`await sb.call("noop")` against its baselines, in one run.

Per round, on this machine and in this order (rounds interleave so that the
machine's noise hits every side alike):

  raw C       floor.c: one KVM_RUN round trip from CPL3 on the calling thread,
              and the same through a dedicated vCPU thread (futex request,
              eventfd completion: the shape of aionub's design)
  aionub      `await sb.call("noop")` on uvloop and on asyncio
  to_thread   `await asyncio.to_thread(lib.rk_roundtrip)` on the same kind
              of loop: one raw KVM_RUN round trip (rawkvm.c, through ctypes,
              which releases the GIL) run in the default executor, which is
              what a synchronous sandbox gives async code
  wasmtime    wasmtime-py calling a no-op export (`(func (export "noop"))`)

Each measurement runs on a fresh event loop of its own (so that only one
helper thread, the vCPU thread or the executor's, competes with the loop's
thread for the two CPUs). Each figure is the p50 of --calls sequential
calls; a round's p50s are
combined as the median over --rounds rounds, and every ratio divides two
such medians. Diagnostics follow: the same noop with the `spin_time` option
(the vCPU thread polls for the next call for 200 µs before it sleeps on its
futex, so a call no longer has to wake it), and with the whole process
pinned to one CPU (the vCPU thread and the event loop then share a CPU, so a
completion is a context switch instead of a cross-CPU wake-up), with the
to_thread round trip and the floor's thread round trip pinned likewise; and
with the event loop pinned to one CPU and the vCPU thread to the other
(every call and every completion is then a cross-CPU wake-up). Unpinned, the
scheduler settles on one of these two placements and keeps it for a while,
so the unpinned figures are bimodal: compare them with both.

    python benchmarks/bench_call.py            # about 35 s on 2 cores
    python benchmarks/bench_call.py --quick    # about 5 s
    python benchmarks/bench_call.py --no-wasmtime
    python benchmarks/bench_call.py --telemetry noop   # aionub[otel] with no-op providers
    python benchmarks/bench_call.py --telemetry sdk    # the OTel SDK recording every call

--telemetry measures the instrumentation's cost (docs/telemetry.md): "off"
(the default) leaves OpenTelemetry alone, "noop" passes the API's no-op
providers to aionub.telemetry.configure (telemetry stays off), "sdk" passes
the SDK's tracer and meter providers with no exporter (every call then makes
a span and records its metrics).

Needs the benchmark extras for uvloop and wasmtime: pip install '.[bench]'.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import (  # noqa: E402
    fmt_us,
    loops_available,
    median,
    one_cpu,
    open_rawkvm,
    percentile,
    place_threads,
    ratio,
    require_kvm,
    require_wasmtime,
    restored_affinity,
    run_on,
    target,
    vcpu_threads,
)
from _floor import run_floor  # noqa: E402

import aionub  # noqa: E402

WAT_NOOP = """
(module
  (func (export "noop")))
"""

SPIN = 0.0002  # spin_time of the diagnostic run: the vCPU thread polls 200 µs for the next call


async def aionub_noop(calls: int, split: bool = False, timeout: float | None = None, **config: object) -> float:
    """p50 (µs) of sequential noop calls on one sandbox. split: pin the event
    loop's thread to one CPU and the sandbox's vCPU thread to another;
    timeout: each call's timeout= (a kernel timer armed and disarmed)."""
    clock = time.perf_counter_ns
    samples: list[float] = []
    before = vcpu_threads() if split else set()
    async with aionub.Sandbox.create(aionub.DEMO_GUEST, **config) as sb:
        call = sb.call
        if split:
            (vcpu,) = vcpu_threads() - before
            place_threads(vcpu, "split")
        for _ in range(min(calls, 1000)):  # warm-up
            await call("noop", timeout=timeout)
        for _ in range(calls):
            t0 = clock()
            await call("noop", timeout=timeout)
            samples.append((clock() - t0) / 1000)
    return percentile(samples, 0.5)


async def to_thread_roundtrip(calls: int) -> float:
    """p50 (µs) of `await asyncio.to_thread(<one raw KVM_RUN round trip>)`."""
    rt = open_rawkvm().rk_roundtrip
    clock = time.perf_counter_ns
    samples: list[float] = []
    for _ in range(min(calls, 1000)):  # warm-up; starts the executor's thread
        if await asyncio.to_thread(rt) != 0:
            raise RuntimeError("raw KVM round trip failed")
    for _ in range(calls):
        t0 = clock()
        rc = await asyncio.to_thread(rt)
        samples.append((clock() - t0) / 1000)
        if rc != 0:
            raise RuntimeError(f"raw KVM round trip failed ({rc})")
    return percentile(samples, 0.5)


def wasmtime_noop(wasmtime, calls: int) -> float:
    engine = wasmtime.Engine()
    store = wasmtime.Store(engine)
    instance = wasmtime.Instance(store, wasmtime.Module(engine, WAT_NOOP), [])
    noop = instance.exports(store)["noop"]
    for _ in range(min(calls, 1000)):
        noop(store)
    clock = time.perf_counter_ns
    samples = []
    for _ in range(calls):
        t0 = clock()
        noop(store)
        samples.append((clock() - t0) / 1000)
    return percentile(samples, 0.5)


def setup_telemetry(mode: str) -> None:
    if mode == "off":
        return
    import aionub.telemetry

    if mode == "noop":
        from opentelemetry.metrics import NoOpMeterProvider
        from opentelemetry.trace import NoOpTracerProvider

        on = aionub.telemetry.configure(tracer_provider=NoOpTracerProvider(), meter_provider=NoOpMeterProvider())
    else:
        from opentelemetry.sdk.metrics import MeterProvider
        from opentelemetry.sdk.trace import TracerProvider

        on = aionub.telemetry.configure(tracer_provider=TracerProvider(), meter_provider=MeterProvider())
    print(f"telemetry: {mode} (aionub emits: {on})", flush=True)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--calls", type=int, default=5000, help="calls per measurement (default 5000)")
    parser.add_argument("--rounds", type=int, default=5, help="interleaved rounds (default 5)")
    parser.add_argument("--quick", action="store_true", help="1000 calls, 2 rounds")
    parser.add_argument("--no-wasmtime", action="store_true", help="skip the wasmtime-py comparison")
    parser.add_argument("--no-pinned", action="store_true", help="skip the one-CPU diagnostics")
    parser.add_argument("--telemetry", choices=("off", "noop", "sdk"), default="off",
                        help="OpenTelemetry setup while measuring (default off; needs aionub[otel])")
    opts = parser.parse_args()
    setup_telemetry(opts.telemetry)
    if opts.quick:
        opts.calls, opts.rounds = 1000, 2
    if opts.calls < 1 or opts.rounds < 1:
        parser.error("--calls and --rounds must be >= 1")
    require_kvm()
    wasmtime = None if opts.no_wasmtime else require_wasmtime()
    loops = loops_available()
    pinned = not opts.no_pinned and hasattr(os, "sched_setaffinity")

    res: dict[str, list[float]] = {}

    def add(key: str, value: float) -> None:
        res.setdefault(key, []).append(value)

    started = time.monotonic()
    for r in range(opts.rounds):
        add("raw", run_floor("roundtrip", opts.calls)["p50_us"])
        add("raw_thread", run_floor("roundtrip-thread", opts.calls)["p50_us"])
        for loop in loops:
            add(f"noop_{loop}", run_on(loop, lambda: aionub_noop(opts.calls)))
            add(f"to_thread_{loop}", run_on(loop, lambda: to_thread_roundtrip(opts.calls)))
        for loop in loops:
            add(f"noop_{loop}_spin", run_on(loop, lambda: aionub_noop(opts.calls, spin_time=SPIN)))
            add(f"noop_{loop}_follow", run_on(loop, lambda: aionub_noop(opts.calls, placement="colocate")))
            add(f"noop_{loop}_timeout", run_on(loop, lambda: aionub_noop(opts.calls, timeout=1.0)))
        if wasmtime is not None:
            add("wasmtime", wasmtime_noop(wasmtime, opts.calls))
        if pinned:
            with one_cpu():
                add("raw_thread_1cpu", run_floor("roundtrip-thread", opts.calls)["p50_us"])
                for loop in loops:
                    add(f"noop_{loop}_1cpu", run_on(loop, lambda: aionub_noop(opts.calls)))
                    add(f"noop_{loop}_timeout_1cpu", run_on(loop, lambda: aionub_noop(opts.calls, timeout=1.0)))
                    add(f"to_thread_{loop}_1cpu", run_on(loop, lambda: to_thread_roundtrip(opts.calls)))
            if len(os.sched_getaffinity(0)) >= 2:
                for loop in loops:
                    with restored_affinity():
                        noop = run_on(loop, lambda: aionub_noop(opts.calls, split=True))
                    add(f"noop_{loop}_2cpu", noop)
        print(f"round {r + 1}: " + ", ".join(f"{k} {v[-1]:.1f}" for k, v in res.items()) + " (µs)",
              flush=True)
    elapsed = time.monotonic() - started

    med = {k: median(v) for k, v in res.items()}
    labels = {
        "raw": "raw C KVM_RUN round trip (CPL3, same thread)",
        "raw_thread": "raw C thread-per-vCPU round trip (futex + eventfd)",
        "noop_uvloop": "aionub noop, uvloop",
        "noop_asyncio": "aionub noop, asyncio",
        "to_thread_uvloop": "to_thread(raw round trip), uvloop",
        "to_thread_asyncio": "to_thread(raw round trip), asyncio",
        "noop_uvloop_spin": f"aionub noop, uvloop, spin_time={SPIN * 1e6:.0f} µs",
        "noop_asyncio_spin": f"aionub noop, asyncio, spin_time={SPIN * 1e6:.0f} µs",
        "noop_uvloop_follow": "aionub noop, uvloop, placement=colocate",
        "noop_asyncio_follow": "aionub noop, asyncio, placement=colocate",
        "noop_uvloop_timeout": "aionub noop, uvloop, timeout=1 (kernel timer per call)",
        "noop_asyncio_timeout": "aionub noop, asyncio, timeout=1 (kernel timer per call)",
        "noop_uvloop_timeout_1cpu": "aionub noop, uvloop, timeout=1, 1 CPU",
        "noop_asyncio_timeout_1cpu": "aionub noop, asyncio, timeout=1, 1 CPU",
        "wasmtime": "wasmtime-py no-op export call",
        "raw_thread_1cpu": "raw C thread-per-vCPU round trip, 1 CPU",
        "noop_uvloop_1cpu": "aionub noop, uvloop, 1 CPU",
        "noop_asyncio_1cpu": "aionub noop, asyncio, 1 CPU",
        "to_thread_uvloop_1cpu": "to_thread(raw round trip), uvloop, 1 CPU",
        "to_thread_asyncio_1cpu": "to_thread(raw round trip), asyncio, 1 CPU",
        "noop_uvloop_2cpu": "aionub noop, uvloop, loop and vCPU on 2 CPUs",
        "noop_asyncio_2cpu": "aionub noop, asyncio, loop and vCPU on 2 CPUs",
    }
    print(f"\np50 of {opts.calls} calls, median of {opts.rounds} rounds ({elapsed:.0f} s):")
    for key, label in labels.items():
        if key in med:
            print(f"  {label:<52} {fmt_us(med[key]):>10}")
    def derived(label: str, value: str) -> None:
        print(f"  {label:<66} {value:>8}")

    print("derived:")
    if "raw_thread_1cpu" in med:
        derived("thread hop of the raw C design, 1 CPU (thread - direct)",
                fmt_us(med["raw_thread_1cpu"] - med["raw"]))
        for loop in loops:
            derived(f"aionub on {loop} over the raw thread round trip, 1 CPU",
                    fmt_us(med[f"noop_{loop}_1cpu"] - med["raw_thread_1cpu"]))
        for loop in loops:
            derived(f"noop on {loop} ÷ raw C round trip, 1 CPU", ratio(med[f"noop_{loop}_1cpu"], med["raw"]))
            derived(f"noop on {loop} ÷ to_thread, both on 1 CPU",
                    ratio(med[f"noop_{loop}_1cpu"], med[f"to_thread_{loop}_1cpu"]))
        for loop in loops:
            if f"noop_{loop}_2cpu" in med:
                derived(f"noop on {loop} ÷ raw C round trip, loop and vCPU on 2 CPUs",
                        ratio(med[f"noop_{loop}_2cpu"], med["raw"]))
    if "wasmtime" in med:
        derived("raw C KVM_RUN round trip ÷ wasmtime no-op (no KVM design beats it)",
                ratio(med["raw"], med["wasmtime"]))
    print()

    goals = {"uvloop": "≤ 2.0", "asyncio": "≤ 2.5"}
    for loop in loops:
        target(f"noop on {loop} ÷ raw C round trip", ratio(med[f"noop_{loop}"], med["raw"]), goals[loop])
    if "raw_thread_1cpu" in med:
        for loop in loops:
            for key, what in ((f"noop_{loop}", "placement=scheduler"), (f"noop_{loop}_follow", "placement=colocate")):
                target(f"noop on {loop}, unpinned, {what} ÷ raw C thread-per-vCPU round trip on 1 CPU",
                       ratio(med[key], med["raw_thread_1cpu"]), "≤ 1.5")
    for loop in loops:
        target(f"noop on {loop} with timeout= ÷ without (the kernel timer's cost)",
               ratio(med[f"noop_{loop}_timeout"], med[f"noop_{loop}"]), "—")
        if f"noop_{loop}_timeout_1cpu" in med:  # the same with a fixed placement: less noise
            target(f"noop on {loop} with timeout= ÷ without, 1 CPU",
                   ratio(med[f"noop_{loop}_timeout_1cpu"], med[f"noop_{loop}_1cpu"]), "—")
    for loop in loops:
        target(f"noop on {loop} ÷ to_thread raw round trip",
               ratio(med[f"noop_{loop}"], med[f"to_thread_{loop}"]), "≤ 0.5")
    for loop in loops:
        if "wasmtime" in med:
            target(f"noop on {loop} ÷ wasmtime-py no-op call",
                   ratio(med[f"noop_{loop}"], med["wasmtime"]), "≤ 1.0")
        else:
            target(f"noop on {loop} ÷ wasmtime-py no-op call", "skipped (--no-wasmtime)", "≤ 1.0")
    return 0


if __name__ == "__main__":
    sys.exit(main())
