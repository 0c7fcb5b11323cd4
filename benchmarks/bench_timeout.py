"""Deadline to `CallTimeout`, against the raw kernel-timer floor and
wasmtime-py's epoch interruption.

aionub arms `timeout=` as a kernel timer aimed at the vCPU thread
(native/limits.c); the floor is the same mechanism in raw C.

Per round, interleaved:

  raw C     floor.c `timer N T`: a POSIX timer (CLOCK_MONOTONIC,
            SIGEV_THREAD_ID) signals a thread whose guest spins at CPL3, at
            an absolute deadline; deadline -> KVM_RUN returns EINTR on that
            thread (the floor), and -> a waiting thread has seen the stop;
            `kill N`: pthread_kill(SIGRTMIN) to a thread whose guest
            spins at CPL3, until its KVM_RUN returns EINTR (the kernel's part
            of stopping a vCPU; nothing else is in it); and `deadline N T`:
            clock_nanosleep to an absolute deadline, then the same kill, until
            the sleeper has seen the vCPU stop (timer + kill + wake-up: the
            floor of any design that stops a guest at a deadline)
  aionub    `await sb.call("spin", timeout=T)` on uvloop and on asyncio (and,
            to compare, `asyncio.timeout(T)` around `sb.call("spin")`: the
            event loop's timer and kill protocol instead of the kernel's); each
            sample is the time from the moment the deadline should fire
            (just before the call + T) to the moment `CallTimeout` is caught.
            The sandbox is poisoned by each timeout and restored from a
            snapshot between samples (re-created if restore() is missing)
  wasmtime  wasmtime-py calling an export that loops forever (`loop br 0`)
            in a store with epoch interruption and an epoch deadline of 1; a
            thread sleeps until the deadline and calls
            `engine.increment_epoch()`; each sample is the time from the
            deadline to the moment the trap is caught

The deadline is T = --timeout-ms after the start. The targets divide the
aionub p50 (and p99) by the timer floor's p50 (and p99), unpinned and with
the loop and the vCPU thread pinned on one CPU, and the aionub p50 by
wasmtime's p50; each figure is the median over rounds of that round's
percentile.

Diagnostics (same run): how late the event loop's own timer is
(`await asyncio.sleep(T)` measured the same way: nothing of aionub in it),
`task.cancel()` on a task awaiting `spin` until its CancelledError is caught
(aionub's kill protocol without the timer), and for wasmtime the time from
`increment_epoch()` to the trap. Then deadline -> CallTimeout again on a
newly created sandbox for every sample (a new vCPU thread each time, which
the scheduler treats differently from one that has been running), and with
the threads pinned: the event loop and the sandbox's vCPU thread on one CPU
(the spinning guest then competes with the loop's timer for that CPU), and
on two CPUs. Unpinned, the scheduler picks one of these placements.

    python benchmarks/bench_timeout.py            # about 30 s on 2 cores
    python benchmarks/bench_timeout.py --quick    # about 7 s
    python benchmarks/bench_timeout.py --no-wasmtime
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import (  # noqa: E402
    fmt_us,
    loops_available,
    median,
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

HAVE_RESTORE = hasattr(aionub.Sandbox, "restore") and hasattr(aionub.Sandbox, "snapshot")

WAT_SPIN = """
(module
  (func (export "spin")
    (loop $forever (br $forever))))
"""


def pcts(samples: list[float]) -> dict[str, float]:
    return {"p50": percentile(samples, 0.5), "p99": percentile(samples, 0.99)}


async def aionub_deadlines(n: int, timeout: float, placement: str | None = None) -> dict[str, dict[str, float]]:
    """Deadline -> CallTimeout samples; unless pinned (placement "same" or
    "split", see place_threads) or "fresh" (a new sandbox for every sample,
    unpinned), also the timer-alone and cancel samples."""
    clock = time.perf_counter
    loop = asyncio.get_running_loop()
    deadline_s, sleep_s, cancel_s, looptimer_s = [], [], [], []
    before = vcpu_threads()
    sb = await aionub.Sandbox.create(aionub.DEMO_GUEST)
    if placement in ("same", "split"):
        if not HAVE_RESTORE:
            raise RuntimeError("pinned runs need Sandbox.restore()")
        (vcpu,) = vcpu_threads() - before
        place_threads(vcpu, placement)
    try:
        await sb.call("noop")
        snap = await sb.snapshot() if HAVE_RESTORE else None

        async def fresh() -> aionub.Sandbox:
            nonlocal sb
            if snap is not None and placement != "fresh":
                await sb.restore(snap)
            else:
                await sb.aclose()
                sb = await aionub.Sandbox.create(aionub.DEMO_GUEST)
            return sb

        for i in range(n + 3):  # the first 3 are warm-up
            # The loop's timer alone.
            t0 = clock()
            await asyncio.sleep(timeout)
            late_sleep = clock() - (t0 + timeout)

            # Deadline -> CallTimeout.
            box = await fresh()
            t0 = clock()
            try:
                await box.call("spin", timeout=timeout)
            except aionub.CallTimeout:
                t1 = clock()
            else:
                raise RuntimeError("spin() returned")
            late_deadline = t1 - (t0 + timeout)
            if placement is not None:
                if i >= 3:
                    deadline_s.append(late_deadline * 1e6)
                continue

            # The event loop's timer instead of the kernel's: asyncio.timeout()
            # around a call without timeout= (how a deadline was enforced
            # before timeout= had a kernel timer).
            box = await fresh()
            t0 = clock()
            try:
                async with asyncio.timeout(timeout):
                    await box.call("spin")
            except TimeoutError:
                t1 = clock()
            else:
                raise RuntimeError("spin() returned")
            late_looptimer = t1 - (t0 + timeout)

            # task.cancel() -> CancelledError, no timer in the measurement.
            box = await fresh()
            task = loop.create_task(box.call("spin"))
            await asyncio.sleep(timeout)
            t0 = clock()
            task.cancel()
            try:
                await task
            except asyncio.CancelledError:
                t1 = clock()
            else:
                raise RuntimeError("spin() returned")
            late_cancel = t1 - t0
            if i >= 3:
                looptimer_s.append(late_looptimer * 1e6)
                sleep_s.append(late_sleep * 1e6)
                deadline_s.append(late_deadline * 1e6)
                cancel_s.append(late_cancel * 1e6)
    finally:
        await sb.aclose()
    if placement is not None:
        return {"deadline": pcts(deadline_s)}
    return {"deadline": pcts(deadline_s), "sleep": pcts(sleep_s), "cancel": pcts(cancel_s),
            "looptimer": pcts(looptimer_s),
            "early": {"p50": sum(1 for x in deadline_s if x < 0) / len(deadline_s),
                      "p99": 0.0}}


class EpochTimer:
    """A thread that increments an engine's epoch at a given deadline."""

    def __init__(self, engine) -> None:
        self.engine = engine
        self.cond = threading.Condition()
        self.deadline: float | None = None
        self.fired_at = 0.0
        self.stopping = False
        self.thread = threading.Thread(target=self._run, name="epoch-timer", daemon=True)
        self.thread.start()

    def arm(self, deadline: float) -> None:
        with self.cond:
            self.deadline = deadline
            self.cond.notify()

    def _run(self) -> None:
        while True:
            with self.cond:
                while self.deadline is None and not self.stopping:
                    self.cond.wait()
                if self.stopping:
                    return
                deadline, self.deadline = self.deadline, None
            delay = deadline - time.perf_counter()
            if delay > 0:
                time.sleep(delay)
            self.fired_at = time.perf_counter()
            self.engine.increment_epoch()

    def close(self) -> None:
        with self.cond:
            self.stopping = True
            self.cond.notify()
        self.thread.join()


def wasmtime_deadlines(wasmtime, n: int, timeout: float) -> dict[str, dict[str, float]]:
    config = wasmtime.Config()
    config.epoch_interruption = True
    engine = wasmtime.Engine(config)
    store = wasmtime.Store(engine)
    spin = wasmtime.Instance(store, wasmtime.Module(engine, WAT_SPIN), []).exports(store)["spin"]
    timer = EpochTimer(engine)
    clock = time.perf_counter
    deadline_s, trap_s = [], []
    try:
        for i in range(n + 3):
            store.set_epoch_deadline(1)
            t0 = clock()
            timer.arm(t0 + timeout)
            try:
                spin(store)
            except wasmtime.Trap:
                t1 = clock()
            else:
                raise RuntimeError("spin returned")
            if i >= 3:
                deadline_s.append((t1 - (t0 + timeout)) * 1e6)
                trap_s.append((t1 - timer.fired_at) * 1e6)
    finally:
        timer.close()
    return {"deadline": pcts(deadline_s), "trap": pcts(trap_s)}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--n", type=int, default=300, help="samples per measurement (default 300)")
    parser.add_argument("--rounds", type=int, default=3, help="interleaved rounds (default 3)")
    parser.add_argument("--timeout-ms", type=float, default=2.0, help="the deadline T (default 2 ms)")
    parser.add_argument("--quick", action="store_true", help="100 samples, 2 rounds")
    parser.add_argument("--no-wasmtime", action="store_true", help="skip the wasmtime-py comparison")
    parser.add_argument("--no-pinned", action="store_true", help="skip the pinned-placement diagnostics")
    opts = parser.parse_args()
    if opts.quick:
        opts.n, opts.rounds = 100, 2
    if opts.n < 1 or opts.rounds < 1 or opts.timeout_ms <= 0:
        parser.error("--n, --rounds and --timeout-ms must be positive")
    require_kvm()
    wasmtime = None if opts.no_wasmtime else require_wasmtime()
    loops = loops_available()
    timeout = opts.timeout_ms / 1000
    pinned = (not opts.no_pinned and HAVE_RESTORE and hasattr(os, "sched_setaffinity")
              and len(os.sched_getaffinity(0)) >= 2)

    res: dict[str, list[float]] = {}

    def add(prefix: str, d: dict[str, float]) -> None:
        for k, v in d.items():
            res.setdefault(f"{prefix}_{k}", []).append(v)

    started = time.monotonic()
    for r in range(opts.rounds):
        floor = run_floor("kill", opts.n)
        add("raw", {"p50": floor["p50_us"], "p99": floor["p99_us"]})
        floor = run_floor("deadline", opts.n, max(100, round(opts.timeout_ms * 1000)))
        add("rawdl", {"p50": floor["p50_us"], "p99": floor["p99_us"]})
        floor = run_floor("timer", opts.n, max(100, round(opts.timeout_ms * 1000)))
        add("rawtm", {"p50": floor["p50_us"], "p99": floor["p99_us"]})
        add("rawtmseen", {"p50": floor["seen_p50_us"], "p99": floor["seen_p99_us"]})
        for loop in loops:
            out = run_on(loop, lambda: aionub_deadlines(opts.n, timeout))
            for what, d in out.items():
                add(f"{what}_{loop}", d)
        for loop in loops:
            out = run_on(loop, lambda: aionub_deadlines(max(20, opts.n // 3), timeout, "fresh"))
            add(f"deadline_{loop}_fresh", out["deadline"])
        if pinned:
            for loop in loops:
                for placement in ("same", "split"):
                    with restored_affinity():
                        out = run_on(loop, lambda: aionub_deadlines(max(20, opts.n // 3), timeout, placement))
                    add(f"deadline_{loop}_{placement}", out["deadline"])
        if wasmtime is not None:
            out = wasmtime_deadlines(wasmtime, opts.n, timeout)
            for what, d in out.items():
                add(f"wasm_{what}", d)
        print(f"round {r + 1}: raw timer p50 {res['rawtm_p50'][-1]:.1f} µs, "
              + ", ".join(f"{loop} {res[f'deadline_{loop}_p50'][-1]:.1f}" for loop in loops)
              + (f", wasmtime {res['wasm_deadline_p50'][-1]:.1f}" if wasmtime else "")
              + " µs from deadline to exception (p50)", flush=True)
    elapsed = time.monotonic() - started

    med = {k: median(v) for k, v in res.items()}

    def row(label: str, key: str) -> None:
        print(f"  {label:<58} {fmt_us(med[key + '_p50']):>10} {fmt_us(med[key + '_p99']):>10}")

    print(f"\n{opts.n} samples per round, T = {opts.timeout_ms:g} ms, median of {opts.rounds} rounds"
          f" ({elapsed:.0f} s):")
    print(f"  {'':<58} {'p50':>10} {'p99':>10}")
    row("raw C kernel timer -> KVM_RUN returns EINTR (the floor)", "rawtm")
    row("  raw C kernel timer -> a waiting thread sees the stop", "rawtmseen")
    row("raw C pthread_kill -> KVM_RUN returns EINTR", "raw")
    row("raw C deadline (clock_nanosleep) -> kill -> sleeper sees stop", "rawdl")
    for loop in loops:
        row(f"aionub deadline -> CallTimeout caught, {loop}", f"deadline_{loop}")
        row(f"  the loop's timer instead: asyncio.timeout(T) -> TimeoutError, {loop}", f"looptimer_{loop}")
        row(f"  {loop} timer alone: deadline -> asyncio.sleep(T) returns", f"sleep_{loop}")
        row(f"  task.cancel() -> CancelledError caught, {loop}", f"cancel_{loop}")
        row(f"  a new sandbox for every sample, {loop}", f"deadline_{loop}_fresh")
        if f"deadline_{loop}_same_p50" in med:
            row(f"  pinned: loop and vCPU on one CPU, {loop}", f"deadline_{loop}_same")
            row(f"  pinned: loop and vCPU on two CPUs, {loop}", f"deadline_{loop}_split")
        early = med[f"early_{loop}_p50"]
        if early:
            print(f"  ({early:.1%} of the {loop} timeouts fired before the deadline:"
                  f" its timers have millisecond granularity)")
    if wasmtime is not None:
        row("wasmtime-py deadline -> Trap caught (timer thread + epoch)", "wasm_deadline")
        row("  increment_epoch() -> Trap caught", "wasm_trap")
    print("derived (p50 / p99):")

    def derived(label: str, key: str, floor: str) -> None:
        print(f"  {label:<58} {ratio(med[key + '_p50'], med[floor + '_p50']):>10}"
              f" {ratio(med[key + '_p99'], med[floor + '_p99']):>10}")

    derived("raw C deadline floor ÷ raw C kill floor", "rawdl", "raw")
    for loop in loops:
        derived(f"aionub deadline on {loop} ÷ raw C kernel timer floor", f"deadline_{loop}", "rawtm")
        derived(f"aionub deadline on {loop} ÷ raw C deadline floor", f"deadline_{loop}", "rawdl")
        derived(f"task.cancel() on {loop} ÷ raw C kill floor", f"cancel_{loop}", "raw")
    if wasmtime is not None:
        derived("wasmtime-py deadline ÷ raw C deadline floor", "wasm_deadline", "rawdl")
    print()
    for loop in loops:
        for key, where in ((f"deadline_{loop}", "unpinned"), (f"deadline_{loop}_same", "loop and vCPU on one CPU")):
            if f"{key}_p50" not in med:
                target(f"deadline → CallTimeout on {loop}, {where} ÷ raw C timer floor, p50", "skipped", "≤ 2.0")
                continue
            target(f"deadline → CallTimeout on {loop}, {where} ÷ raw C timer floor, p50",
                   ratio(med[f"{key}_p50"], med["rawtm_p50"]), "≤ 2.0")
            target(f"deadline → CallTimeout on {loop}, {where} ÷ raw C timer floor, p99",
                   ratio(med[f"{key}_p99"], med["rawtm_p99"]), "≤ 5")
    for loop in loops:
        name = f"deadline → CallTimeout on {loop} ÷ wasmtime-py epoch interrupt, p50"
        if wasmtime is None:
            target(name, "skipped (--no-wasmtime)", "≤ 1.0")
        else:
            target(name, ratio(med[f"deadline_{loop}_p50"], med["wasm_deadline_p50"]), "≤ 1.0")
    return 0


if __name__ == "__main__":
    sys.exit(main())
