"""The main job: several sandboxes from the demo guest running concurrent
calls, some CPU-bound, some that time out and are killed; then a summary."""

from __future__ import annotations

import asyncio
import random
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, TextIO

from ._exceptions import CallTimeout, SandboxError
from ._paths import DEMO_GUEST
from ._sandbox import Sandbox

__all__ = ("run_demo", "DemoReport")

# (function, argument factory, check of the result, timeout): a mixed load.
_Job = tuple[str, Callable[[random.Random], tuple[Any, ...]], Callable[[tuple[Any, ...], Any], bool], float | None]

_JOBS: list[tuple[int, _Job]] = [
    (30, ("noop", lambda r: (), lambda a, v: v is None, None)),
    (20, ("add", lambda r: (r.randrange(-10**9, 10**9), r.randrange(10**9)), lambda a, v: v == a[0] + a[1], None)),
    (10, ("mul", lambda r: (r.random(), r.random()), lambda a, v: v == a[0] * a[1], None)),
    (10, ("echo", lambda r: (r.randbytes(r.randrange(1, 4096)),), lambda a, v: v == a[0], None)),
    (10, ("upper", lambda r: ("hello, sandbox",), lambda a, v: v == "HELLO, SANDBOX", None)),
    (8, ("fib", lambda r: (r.randrange(15, 24),), lambda a, v: v == _fib(a[0]), None)),
    (2, ("spin", lambda r: (), lambda a, v: False, 0.02)),
]


def _fib(n: int) -> int:
    a, b = 0, 1
    for _ in range(n):
        a, b = b, a + b
    return a


@dataclass
class DemoReport:
    sandboxes: int
    duration: float
    latencies: list[float] = field(default_factory=list)
    kills: int = 0
    errors: list[str] = field(default_factory=list)
    restored: int = 0
    #: Latencies of the completed calls of each function.
    by_function: dict[str, list[float]] = field(default_factory=dict)

    @property
    def calls(self) -> int:
        return len(self.latencies) + self.kills + len(self.errors)

    def render(self, per_function: bool = False) -> str:
        """The summary; ``per_function`` adds a table of calls and latency
        by guest function."""
        p50, p99 = _percentiles(self.latencies)
        lines = [
            f"aionub demo: {self.sandboxes} sandboxes of {DEMO_GUEST.name}, {self.duration:.1f} s",
            f"  calls    {self.calls:>8}  ({self.calls / self.duration:,.0f}/s)",
            f"  latency  p50 {p50:,.0f} µs   p99 {p99:,.0f} µs   (completed calls)",
            f"  kills    {self.kills:>8}  (spin() stopped at timeout=20 ms; sandbox restored {self.restored}x)",
            f"  errors   {len(self.errors):>8}",
        ]
        lines += [f"    {e}" for e in self.errors[:5]]
        if per_function:
            lines += ["", f"  {'function':<10} {'calls':>9} {'p50 µs':>9} {'p99 µs':>9}"]
            for name, _ in sorted(((j[0], w) for w, j in _JOBS), key=lambda item: -item[1]):
                lat = self.by_function.get(name, [])
                if name == "spin":
                    lines.append(f"  {name:<10} {self.kills:>9,}   (each one killed by its 20 ms timeout)")
                    continue
                f50, f99 = _percentiles(lat)
                lines.append(f"  {name:<10} {len(lat):>9,} {f50:>9,.0f} {f99:>9,.0f}")
        return "\n".join(lines)

    def progress_line(self, elapsed: float, rate: float) -> str:
        """One line for the live display."""
        return (
            f"  {elapsed:5.1f}/{self.duration:.1f} s   calls {self.calls:>9,}   {rate:>8,.0f} calls/s   "
            f"kills {self.kills:>5,}   errors {len(self.errors):>3}"
        )


def _percentiles(latencies: list[float]) -> tuple[float, float]:
    """p50 and p99 in µs (NaN when empty)."""
    if not latencies:
        return float("nan"), float("nan")
    lat = sorted(latencies)
    return statistics.median(lat) * 1e6, lat[min(len(lat) - 1, int(len(lat) * 0.99))] * 1e6


async def _worker(sb: Sandbox, rng: random.Random, deadline: float, report: DemoReport) -> None:
    weights = [w for w, _ in _JOBS]
    jobs = [j for _, j in _JOBS]
    snapshot = await sb.snapshot()  # a killed call poisons the sandbox: restore to this
    while time.monotonic() < deadline:
        name, make_args, check, timeout = rng.choices(jobs, weights)[0]
        args = make_args(rng)
        start = time.perf_counter()
        try:
            value = await sb.call(name, *args, timeout=timeout)
        except CallTimeout:
            report.kills += 1
            await sb.restore(snapshot)
            report.restored += 1
            continue
        except SandboxError as exc:
            report.errors.append(f"{name}: {type(exc).__name__}: {exc}")
            continue
        elapsed = time.perf_counter() - start
        if check(args, value):
            report.latencies.append(elapsed)
            report.by_function.setdefault(name, []).append(elapsed)
        else:
            report.errors.append(f"{name}{args!r:.60} returned a wrong result {value!r:.60}")


async def _show_progress(report: DemoReport, out: TextIO, started: float, interval: float = 0.2) -> None:
    """Rewrite one status line in place until cancelled."""
    last_time, last_calls = started, 0
    try:
        while True:
            await asyncio.sleep(interval)
            now = time.monotonic()
            calls = report.calls
            rate = (calls - last_calls) / (now - last_time) if now > last_time else 0.0
            last_time, last_calls = now, calls
            out.write("\r\x1b[K" + report.progress_line(now - started, rate))
            out.flush()
    finally:
        out.write("\r\x1b[K")
        out.flush()


async def run_demo(
    sandboxes: int = 4,
    duration: float = 3.0,
    seed: int = 1,
    out: TextIO | None = None,
    progress: bool = False,
) -> DemoReport:
    """Run the demo; print the summary to ``out``. ``progress`` (for a
    terminal) shows a status line updating in place while it runs and adds
    a per-function table to the summary."""
    report = DemoReport(sandboxes, duration)
    created = await asyncio.gather(*(Sandbox.create(DEMO_GUEST) for _ in range(sandboxes)))
    display: asyncio.Task[None] | None = None
    try:
        deadline = time.monotonic() + duration
        started = time.monotonic()
        if progress and out is not None:
            display = asyncio.create_task(_show_progress(report, out, started))
        await asyncio.gather(
            *(_worker(sb, random.Random(seed * 1000 + i), deadline, report) for i, sb in enumerate(created))
        )
        report.duration = time.monotonic() - started
    finally:
        if display is not None:
            display.cancel()
            await asyncio.gather(display, return_exceptions=True)
        for sb in created:
            await sb.aclose()
    if out is not None:
        print(report.render(per_function=progress), file=out)
    return report
