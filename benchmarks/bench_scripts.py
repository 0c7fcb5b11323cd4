"""The script sandboxes (JsSandbox, LuaSandbox) against their baselines, in
one run.

Per round, in this order (rounds interleave so that the machine's noise hits
every side alike):

  round trip   `await js.eval("1+1")` and `await lua.eval("1+1")` ÷
               `await sb.call("noop")` on the demo guest: what the script
               runtime adds to a guest call (p50 of --calls sequential calls)
  fast path    a request on `JsSandbox.pool(setup=LIBRARY)`: checkout,
               `call("render", ...)`, give back (restore), ÷ creating a
               JsSandbox per request, loading LIBRARY and calling it
  CPU          two workloads, in the guest ÷ the same engine built natively:
               `fib(25)` (recursive) --fib-reps times in a row (the goal),
               and sorting 50,000 records with a comparison callback (heap-
               bound: the allocator and the collector at work). The native
               engines are QuickJS's and Lua's pinned sources (aionub._sources,
               the ones the runtime guests are built from) compiled with our
               driver, `scripts_native.c`, by the same gcc with the guests'
               code generation flags (non-PIE included), twice: on the host's
               glibc (`.build/scripts_native_js`, `_lua`), which is what a
               user would run natively and what the goal is measured
               against, and on the guest SDK's own musl (`_js_musl`,
               `_lua_musl`), the same C library as in the guest, which
               leaves the sandbox as the only difference. One native process
               per engine, workload and C library serves the whole run (set
               up and warmed up once, like the sandboxes), and the runs
               alternate one by one: guest, glibc, musl per engine and
               workload, then the reverse order, --reps times per round. A
               guest run is timed on the host around `await sb.eval(run)`,
               less the p50 of an empty eval's round trip in the same round
               (about 60 µs of a run of tens of ms); a native run inside its
               process around the engine's eval (CLOCK_MONOTONIC). speed =
               native time ÷ guest time: the median over pairs (each pair
               ran within milliseconds, so load that comes and goes hits both
               alike), with the ratio of p50s beside it. To tell "slower
               code" from "less CPU", each run also reports the CPU time it
               got: the native thread's CLOCK_THREAD_CPUTIME_ID, and the vCPU
               thread's run time in /proc/self/task/TID/schedstat (KVM_RUN,
               guest code included) with its run-queue wait; speed by CPU
               time is native CPU ÷ guest CPU, over pairs. The involuntary
               context switches of each side per run (/proc status) show how
               often the load preempted it.

Side by side, without a goal, what a Python user would pick instead where it
installs here: PyPI's `lupa` (Lua 5.4 in-process) and `quickjs` (QuickJS
in-process) bindings, timed the same way (round trip of eval("1+1") and the
fib runs; no isolation: they run in the calling process), and a `qjs` or
`lua` binary started per call (skipped, with the reason, when none is on
PATH). Install the bindings with pip install '.[bench]'.

    python benchmarks/bench_scripts.py            # about 65 s on 2 shared cores (more the first time: builds)
    python benchmarks/bench_scripts.py --quick    # about 25 s
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import (
    BENCH_EXTRA_HINT,
    HERE,
    build_c,
    build_musl_c,
    fmt_us,
    median,
    percentile,
    ratio,
    require_kvm,
    target,
    vcpu_threads,
)

import aionub
from aionub import _build, _sources
from aionub._runtimes import RUNTIMES

FIB_JS = "function fib(n) { return n < 2 ? n : fib(n - 1) + fib(n - 2) }"
FIB_LUA = "function fib(n) if n < 2 then return n end return fib(n - 1) + fib(n - 2) end"
LIBRARY = """
const TEMPLATES = {row: (k, v) => `<tr><td>${k}</td><td>${v}</td></tr>`}
function render(user) {
    return '<table>' + Object.entries(user).map(([k, v]) => TEMPLATES.row(k, v)).join('') + '</table>'
}
"""
USER = {"name": "ada", "visits": 3, "plan": "pro"}
# The native builds: the host's C library, and the guest's (the SDK's musl).
LIBCS = ("glibc", "musl")
SIDES = ("guest", *LIBCS)
# A heap-bound workload beside fib (which touches no memory): 50,000 records
# built, sorted with a comparison callback, and dropped, every run (about
# 10 MB of the engine's heap; the collector and the allocator at work).
SORT_JS = """
function sortRecords() {
    const a = []
    for (let i = 0; i < 50000; i++) a.push({k: (i * 7919) % 50021, s: 'r' + i})
    a.sort((x, y) => x.k - y.k)
    return a.length
}
"""
SORT_LUA = """
function sort_records()
    local a = {}
    for i = 1, 50000 do a[i] = {k = (i * 7919) % 50021, s = 'r' .. i} end
    table.sort(a, function(x, y) return x.k < y.k end)
    return #a
end
"""
# Flags of the guest build a hosted program cannot use. The native engines
# keep the rest, non-PIE code included (linked -no-pie), so that both sides
# run the same code generation.
_NOT_NATIVE = {"-ffreestanding", "-nostdinc", "-Werror=implicit-function-declaration"}


def js_loop(n: int, k: int) -> str:
    return f"for (let i = 0; i < {k}; i++) fib({n})"


def lua_loop(n: int, k: int) -> str:
    return f"for i = 1, {k} do fib({n}) end"


def workloads(n: int, k: int) -> dict[str, dict[str, tuple[str, str]]]:
    """The CPU workloads: per workload and engine, (setup code, one timed run)."""
    return {
        "fib": {"js": (FIB_JS, js_loop(n, k)), "lua": (FIB_LUA, lua_loop(n, k))},
        "sort": {"js": (SORT_JS, "sortRecords()"), "lua": (SORT_LUA, "sort_records()")},
    }


def build_native(engine: str, libc: str) -> Path:
    """scripts_native.c with the engine's pinned sources, natively, on the
    host's glibc or (like the guest) on the guest SDK's musl."""
    runtime = RUNTIMES[engine]
    root = _sources.fetch(runtime.source)
    flags = [f for f in _build.GUEST_CFLAGS if f not in _NOT_NATIVE]
    sources = [HERE / "scripts_native.c", *runtime.units(root)]
    cflags = [*flags, "-w", f"-DENGINE_{engine.upper()}", "-I", str(root), *runtime.cflags(root)]
    if libc == "musl":
        return build_musl_c(f"scripts_native_{engine}_musl", sources, cflags=cflags, depends=sorted(root.glob("*.h")))
    return build_c(f"scripts_native_{engine}", sources, depends=sorted(root.glob("*.h")), cflags=cflags,
                   ldflags=["-no-pie", "-lm", "-lpthread"])


class Native:
    """One engine's native executable, started once: it runs the setup and
    one warm-up, then one timed run per request (scripts_native.c)."""

    def __init__(self, exe: Path, setup: str, timed: str, workdir: Path) -> None:
        workdir.mkdir(parents=True, exist_ok=True)
        setup_file = workdir / f"{exe.name}.setup"
        timed_file = workdir / f"{exe.name}.timed"
        setup_file.write_text(setup)
        timed_file.write_text(timed)
        self.proc = subprocess.Popen([str(exe), str(setup_file), str(timed_file)],
                                     stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)

    def run(self) -> tuple[float, float, float]:
        """One timed run: (wall µs, CPU µs, preemptions)."""
        assert self.proc.stdin is not None and self.proc.stdout is not None
        status = f"/proc/{self.proc.pid}/status"
        before = preemptions(status)
        self.proc.stdin.write("\n")
        self.proc.stdin.flush()
        line = self.proc.stdout.readline()
        if not line:
            raise RuntimeError(f"{self.proc.args[0]} exited with status {self.proc.wait()}")
        wall, cpu = (int(x) / 1000 for x in line.split())
        return wall, cpu, preemptions(status) - before

    def close(self) -> None:
        if self.proc.stdin is not None:
            self.proc.stdin.close()
        self.proc.wait(timeout=10)


def schedstat(tid: int) -> tuple[float, float]:
    """A thread's CPU time and run-queue wait so far, µs (/proc schedstat)."""
    with open(f"/proc/self/task/{tid}/schedstat") as f:
        run_ns, wait_ns, _ = f.read().split()
    return int(run_ns) / 1000, int(wait_ns) / 1000


def preemptions(path: str) -> int:
    """A thread's involuntary context switches so far (``path``: its /proc status)."""
    with open(path) as f:
        for line in f:
            if line.startswith("nonvoluntary_ctxt_switches:"):
                return int(line.split()[1])
    raise RuntimeError(f"no nonvoluntary_ctxt_switches in {path}")


class GuestRuns:
    """Timed runs of one script sandbox, with its vCPU thread's CPU time."""

    def __init__(self, sb: Any, tid: int, timed: str) -> None:
        self.sb, self.tid, self.timed = sb, tid, timed

    async def run(self) -> tuple[float, float, float, float]:
        """One timed run: (wall µs, vCPU CPU µs, vCPU preemptions, vCPU run-queue wait µs)."""
        status = f"/proc/self/task/{self.tid}/status"
        cpu0, wait0 = schedstat(self.tid)
        pre0 = preemptions(status)
        t0 = time.perf_counter_ns()
        await self.sb.eval(self.timed)
        wall = (time.perf_counter_ns() - t0) / 1000
        cpu1, wait1 = schedstat(self.tid)
        return wall, cpu1 - cpu0, preemptions(status) - pre0, wait1 - wait0


async def p50_of(calls: int, fn: Callable[[], Awaitable[Any]]) -> float:
    samples = []
    for _ in range(calls):
        t0 = time.perf_counter_ns()
        await fn()
        samples.append((time.perf_counter_ns() - t0) / 1000)
    return percentile(samples, 0.5)


def sync_p50(calls: int, fn: Callable[[], Any]) -> float:
    samples = []
    for _ in range(calls):
        t0 = time.perf_counter_ns()
        fn()
        samples.append((time.perf_counter_ns() - t0) / 1000)
    return percentile(samples, 0.5)


def bindings() -> dict[str, Any]:
    """The PyPI bindings that import here, with a note for each missing one."""
    found: dict[str, Any] = {}
    try:
        import lupa.lua54

        rt = lupa.lua54.LuaRuntime()
        rt.execute(FIB_LUA)
        found["lupa"] = rt
    except ImportError as exc:
        print(f"skipped: lupa (Lua in-process) is not installed ({exc}); {BENCH_EXTRA_HINT}")
    try:
        import quickjs

        ctx = quickjs.Context()
        ctx.eval(FIB_JS)
        found["quickjs"] = ctx
    except ImportError as exc:
        print(f"skipped: quickjs (PyPI bindings) is not installed ({exc}); {BENCH_EXTRA_HINT}")
    return found


def subprocess_binaries() -> dict[str, list[str]]:
    """A qjs / lua binary per call, if there is one on PATH."""
    found = {}
    for engine, names, flag in (("js", ("qjs",), "-e"), ("lua", ("lua5.4", "lua"), "-e")):
        exe = next((shutil.which(n) for n in names if shutil.which(n)), None)
        if exe is None:
            print(f"skipped: a subprocess per call for {engine}: no {' or '.join(names)} on PATH")
        else:
            found[engine] = [exe, flag]
    return found


async def measure(opts: argparse.Namespace, natives: dict[tuple[str, str, str], Native], others: dict[str, Any],
                  binaries: dict[str, list[str]]) -> dict[str, list[float]]:
    n, k = opts.fib_n, opts.fib_reps
    work = workloads(n, k)
    rows: dict[str, list[float]] = {}

    def add(name: str, value: float) -> None:
        rows.setdefault(name, []).append(value)

    async with contextlib.AsyncExitStack() as stack:
        demo = await stack.enter_async_context(aionub.Sandbox.create(aionub.DEMO_GUEST))
        sandboxes: dict[str, Any] = {}
        tids: dict[str, int] = {}
        for engine, cls in (("js", aionub.JsSandbox), ("lua", aionub.LuaSandbox)):
            before = vcpu_threads()
            sandboxes[engine] = await stack.enter_async_context(cls.create())
            (tids[engine],) = vcpu_threads() - before
        js, lua = sandboxes["js"], sandboxes["lua"]
        pool = await stack.enter_async_context(aionub.JsSandbox.pool(setup=LIBRARY, size=1))
        guests: dict[tuple[str, str], GuestRuns] = {}
        for name, engines in work.items():
            for engine, (setup, timed) in engines.items():
                await sandboxes[engine].exec(setup)
                guests[name, engine] = GuestRuns(sandboxes[engine], tids[engine], timed)
        assert await js.eval("1+1") == 2 and await lua.eval("1+1") == 2
        assert await js.eval(f"fib({n})") == await lua.eval(f"fib({n})")
        assert await js.eval("sortRecords()") == await lua.eval("sort_records()") == 50000
        for guest in guests.values():
            await guest.run()  # warm-up, as the native processes had theirs

        async def pooled() -> Any:
            async with pool.acquire() as sb:
                return await aionub.JsSandbox(sb).call("render", USER)

        async def fresh() -> Any:
            async with aionub.JsSandbox.create() as sb:
                await sb.exec(LIBRARY)
                return await sb.call("render", USER)

        assert await pooled() == await fresh()
        for r in range(opts.rounds):
            add("noop", await p50_of(opts.calls, lambda: demo.call("noop")))
            add("js eval", await p50_of(opts.calls, lambda: js.eval("1+1")))
            add("lua eval", await p50_of(opts.calls, lambda: lua.eval("1+1")))
            add("pool request", await p50_of(opts.calls, pooled))
            add("fresh request", await p50_of(max(3, opts.calls // 20), fresh))
            for name, obj in others.items():
                add(f"{name} eval", sync_p50(opts.calls, lambda obj=obj: obj.eval("1+1")))
            for engine, argv in binaries.items():
                code = "print(1+1)" if engine == "lua" else "console.log(1+1)"
                add(f"{engine} subprocess", sync_p50(max(3, opts.calls // 20), lambda argv=argv, code=code:
                                                     subprocess.run([*argv, code], capture_output=True, check=True)))

            empty = {"js": await p50_of(opts.calls, lambda: js.eval("0")),
                     "lua": await p50_of(opts.calls, lambda: lua.eval("0"))}
            runs: dict[tuple[str, str, str], list[tuple[float, ...]]] = {}
            order = [(name, engine, side) for name in work for engine in ("js", "lua") for side in SIDES]
            for rep in range(opts.reps):
                for name, engine, side in order if rep % 2 == 0 else order[::-1]:
                    if side == "guest":
                        wall, cpu, preempted, wait = await guests[name, engine].run()
                        sample: tuple[float, ...] = (wall - empty[engine], cpu, preempted, wait)
                    else:
                        sample = natives[name, engine, side].run()
                    runs.setdefault((name, engine, side), []).append(sample)
            for name in work:
                for engine in ("js", "lua"):
                    key = f"{name} {engine}"
                    guest = runs[name, engine, "guest"]
                    add(f"{key} guest", percentile([g[0] for g in guest], 0.5))
                    add(f"{key} guest cpu", percentile([g[1] for g in guest], 0.5))
                    add(f"{key} guest preempted", percentile([g[2] for g in guest], 0.5))
                    add(f"{key} guest wait", percentile([g[3] for g in guest], 0.5))
                    for libc in LIBCS:
                        native = runs[name, engine, libc]
                        add(f"{key} {libc}", percentile([x[0] for x in native], 0.5))
                        add(f"{key} {libc} cpu", percentile([x[1] for x in native], 0.5))
                        add(f"{key} {libc} preempted", percentile([x[2] for x in native], 0.5))
                        add(f"{key} {libc} paired", median(x[0] / g[0] for g, x in zip(guest, native, strict=True)))
                        add(f"{key} {libc} paired cpu",
                            median(x[1] / g[1] for g, x in zip(guest, native, strict=True)))
            if "lupa" in others:
                add("fib lupa", sync_p50(opts.reps, lambda: others["lupa"].execute(lua_loop(n, k))))
            if "quickjs" in others:
                add("fib quickjs", sync_p50(opts.reps, lambda: others["quickjs"].eval(js_loop(n, k))))
            speeds = ", ".join(f"{key[:-7]} {rows[key][-1]:.3f}" for key in rows if key.endswith("glibc paired"))
            shown = [key for key in rows if not any(w in key for w in ("paired", "cpu", "wait", "preempted"))]
            print(f"round {r + 1}: " + ", ".join(f"{key} {fmt_us(rows[key][-1])}" for key in shown)
                  + f"; speed {speeds}", flush=True)
    return rows


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--calls", type=int, default=400, help="sequential calls per round trip figure (400)")
    parser.add_argument("--reps", type=int, default=5, help="fib runs per side per round (5)")
    parser.add_argument("--rounds", type=int, default=5, help="alternating rounds (5)")
    parser.add_argument("--fib-n", type=int, default=25, help="fib(N) (25)")
    parser.add_argument("--fib-reps", type=int, default=4, help="fib(N) calls per timed run (4)")
    parser.add_argument("--quick", action="store_true", help="150 calls, 3 fib runs, 3 rounds")
    opts = parser.parse_args()
    if opts.quick:
        opts.calls, opts.reps, opts.rounds = 150, 3, 3
    if min(opts.calls, opts.reps, opts.rounds, opts.fib_n, opts.fib_reps) < 1:
        parser.error("every count must be >= 1")
    require_kvm()
    n, k = opts.fib_n, opts.fib_reps
    print("building the native engines (cached in benchmarks/.build/)...", flush=True)
    exes = {(engine, libc): build_native(engine, libc) for engine in ("js", "lua") for libc in LIBCS}
    others = bindings()
    binaries = subprocess_binaries()
    with tempfile.TemporaryDirectory(prefix="bench-scripts-") as tmp:
        natives = {
            (name, engine, libc): Native(exes[engine, libc], setup, timed, Path(tmp) / f"{name}-{engine}")
            for name, engines in workloads(n, k).items()
            for engine, (setup, timed) in engines.items()
            for libc in LIBCS
        }
        try:
            rows = asyncio.run(measure(opts, natives, others, binaries))
        finally:
            for native in natives.values():
                native.close()
    m = {name: median(values) for name, values in rows.items()}

    print(f"\nmedians over {opts.rounds} rounds of p50s (round trips: {opts.calls} calls;"
          f" CPU: {opts.reps} runs per side of {k} x fib({n}) and of sorting 50,000 records):")
    for name, value in m.items():
        if "preempted" in name:
            print(f"  {name:<26} {value:>8.1f} times per run")
        elif "paired" not in name:  # ratios, printed below
            print(f"  {name:<26} {fmt_us(value):>12}")
    for key in (f"{name} {engine}" for name in workloads(n, k) for engine in ("js", "lua")):
        speeds = "; ".join(
            f"native {libc} ÷ guest {m[f'{key} {libc} paired']:.3f} (median of pairs),"
            f" {m[f'{key} {libc}'] / m[f'{key} guest']:.3f} (ratio of p50s),"
            f" by CPU time {m[f'{key} {libc} paired cpu']:.3f}"
            for libc in LIBCS
        )
        print(f"  {key} speed: {speeds}; the vCPU thread waited {fmt_us(m[f'{key} guest wait'])} for a CPU per run")
    for name in ("lupa", "quickjs"):
        if name in others:
            engine = "lua" if name == "lupa" else "js"
            print(f"  {name}: eval('1+1') {fmt_us(m[f'{name} eval'])}; fib {fmt_us(m[f'fib {name}'])}"
                  f" (guest ÷ {name}: {ratio(m[f'fib {engine} guest'], m[f'fib {name}'])} x the time)")
    print()
    target('`js.eval("1+1")` ÷ demo `noop` call', ratio(m["js eval"], m["noop"]), "no goal: what the runtime adds")
    target('`lua.eval("1+1")` ÷ demo `noop` call', ratio(m["lua eval"], m["noop"]), "no goal: what the runtime adds")
    target("JsSandbox.pool request (checkout + call + restore) ÷ JsSandbox created per request",
           f"{m['pool request'] / m['fresh request']:.3f}", "no goal: the fast path")
    for engine, name in (("js", "QuickJS"), ("lua", "Lua")):
        target(f"fib({n}) in the {name} guest ÷ the same {name} natively on glibc (speed, median of pairs)",
               f"{m[f'fib {engine} glibc paired']:.3f}", "≥ 0.85")
    for engine, name in (("js", "QuickJS"), ("lua", "Lua")):
        target(f"fib({n}) in the {name} guest ÷ the same {name} natively on the guest's musl",
               f"{m[f'fib {engine} musl paired']:.3f}", "no goal: the sandbox alone, same C library")
    for engine, name in (("js", "QuickJS"), ("lua", "Lua")):
        for libc in LIBCS:
            target(f"sorting 50,000 records in the {name} guest ÷ the same {name} natively on {libc}",
                   f"{m[f'sort {engine} {libc} paired']:.3f}", "no goal: a heap-bound workload beside fib")
    return 0


if __name__ == "__main__":
    sys.exit(main())
