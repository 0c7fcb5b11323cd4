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
  CPU          `fib(25)` (recursive) --fib-reps times in a row, in the guest
               ÷ the same engine built natively: QuickJS's and Lua's pinned
               sources (aionub._sources, the ones the runtime guests are
               built from) compiled with our driver, `scripts_native.c`, by
               the same gcc with the guests' code generation flags into
               `.build/scripts_native_js` and `_lua`, which time each run
               with CLOCK_MONOTONIC around the engine's eval. In the JS
               guest the script times itself with Date.now() (ms; a run is
               tens of ms); standard Lua has no sub-second wall clock (and
               os.clock() is the vCPU thread's CPU time, which a nested
               hypervisor under-counts), so the Lua guest's run is timed on
               the host minus the p50 of an empty eval's round trip in the
               same round. speed = native time ÷ guest time.

Side by side, without a goal, what a Python user would pick instead where it
installs here: PyPI's `lupa` (Lua 5.4 in-process) and `quickjs` (QuickJS
in-process) bindings, timed the same way (round trip of eval("1+1") and the
fib runs; no isolation: they run in the calling process), and a `qjs` or
`lua` binary started per call (skipped, with the reason, when none is on
PATH). Install the bindings with pip install '.[bench]'.

    python benchmarks/bench_scripts.py            # about 25 s on 2 cores (+40 s the first time: builds)
    python benchmarks/bench_scripts.py --quick    # about 10 s
"""

from __future__ import annotations

import argparse
import asyncio
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import BENCH_EXTRA_HINT, HERE, build_c, fmt_us, median, percentile, ratio, require_kvm, target

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
_NOT_NATIVE = {"-ffreestanding", "-nostdinc", "-fno-pic", "-fno-pie", "-Werror=implicit-function-declaration"}


def js_loop(n: int, k: int) -> str:
    return f"for (let i = 0; i < {k}; i++) fib({n})"


def lua_loop(n: int, k: int) -> str:
    return f"for i = 1, {k} do fib({n}) end"


def build_native(engine: str) -> Path:
    """scripts_native.c with the engine's pinned sources, natively."""
    runtime = RUNTIMES[engine]
    root = _sources.fetch(runtime.source)
    flags = [f for f in _build.GUEST_CFLAGS if f not in _NOT_NATIVE]
    return build_c(
        f"scripts_native_{engine}",
        [HERE / "scripts_native.c", *runtime.units(root)],
        depends=sorted(root.glob("*.h")),
        cflags=[*flags, "-w", f"-DENGINE_{engine.upper()}", "-I", str(root), *runtime.cflags(root)],
        ldflags=["-lm", "-lpthread"],
    )


class Native:
    """One engine's native executable with its setup and timed scripts."""

    def __init__(self, exe: Path, setup: str, timed: str, workdir: Path) -> None:
        self.exe = exe
        self.setup = workdir / f"{exe.name}.setup"
        self.timed = workdir / f"{exe.name}.timed"
        self.setup.write_text(setup)
        self.timed.write_text(timed)

    def run(self, reps: int) -> list[float]:
        """µs per timed run."""
        out = subprocess.run([str(self.exe), str(self.setup), str(self.timed), str(reps)],
                             capture_output=True, text=True, check=True)
        return [int(line) / 1000 for line in out.stdout.split()]


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


async def measure(opts: argparse.Namespace, natives: dict[str, Native], others: dict[str, Any],
                  binaries: dict[str, list[str]]) -> dict[str, list[float]]:
    n, k = opts.fib_n, opts.fib_reps
    rows: dict[str, list[float]] = {}

    def add(name: str, value: float) -> None:
        rows.setdefault(name, []).append(value)

    timed_js = f"(function () {{ const t0 = Date.now(); {js_loop(n, k)}; return Date.now() - t0 }})()"
    async with (aionub.Sandbox.create(aionub.DEMO_GUEST) as demo, aionub.JsSandbox.create() as js,
                aionub.LuaSandbox.create() as lua,
                aionub.JsSandbox.pool(setup=LIBRARY, size=1) as pool):
        await js.exec(FIB_JS)
        await lua.exec(FIB_LUA)
        assert await js.eval("1+1") == 2 and await lua.eval("1+1") == 2
        assert await js.eval(f"fib({n})") == await lua.eval(f"fib({n})")

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

            js_runs = [await js.eval(timed_js) * 1000.0 for _ in range(opts.reps)]
            empty = await p50_of(opts.calls, lambda: lua.eval("0"))
            lua_runs = []
            for _ in range(opts.reps):
                t0 = time.perf_counter_ns()
                await lua.eval(lua_loop(n, k))
                lua_runs.append((time.perf_counter_ns() - t0) / 1000 - empty)
            add("fib js guest", percentile(js_runs, 0.5))
            add("fib lua guest", percentile(lua_runs, 0.5))
            add("fib js native", percentile(natives["js"].run(opts.reps), 0.5))
            add("fib lua native", percentile(natives["lua"].run(opts.reps), 0.5))
            if "lupa" in others:
                add("fib lupa", sync_p50(opts.reps, lambda: others["lupa"].execute(lua_loop(n, k))))
            if "quickjs" in others:
                add("fib quickjs", sync_p50(opts.reps, lambda: others["quickjs"].eval(js_loop(n, k))))
            print(f"round {r + 1}: " + ", ".join(f"{name} {fmt_us(v[-1])}" for name, v in rows.items()), flush=True)
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
    exes = {engine: build_native(engine) for engine in ("js", "lua")}
    others = bindings()
    binaries = subprocess_binaries()
    with tempfile.TemporaryDirectory(prefix="bench-scripts-") as tmp:
        natives = {
            "js": Native(exes["js"], FIB_JS, js_loop(n, k), Path(tmp)),
            "lua": Native(exes["lua"], FIB_LUA, lua_loop(n, k), Path(tmp)),
        }
        rows = asyncio.run(measure(opts, natives, others, binaries))
    m = {name: median(values) for name, values in rows.items()}

    print(f"\nmedians over {opts.rounds} rounds of p50s (round trips: {opts.calls} calls;"
          f" fib: {opts.reps} runs of {k} x fib({n})):")
    for name, value in m.items():
        print(f"  {name:<22} {fmt_us(value):>12}")
    print(f"  speed, native ÷ guest: js {m['fib js native'] / m['fib js guest']:.3f},"
          f" lua {m['fib lua native'] / m['fib lua guest']:.3f}")
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
    target(f"fib({n}) in the JS guest ÷ the same QuickJS natively (speed)",
           f"{m['fib js native'] / m['fib js guest']:.3f}", "≥ 0.85")
    target(f"fib({n}) in the Lua guest ÷ the same Lua natively (speed)",
           f"{m['fib lua native'] / m['fib lua guest']:.3f}", "≥ 0.85")
    return 0


if __name__ == "__main__":
    sys.exit(main())
