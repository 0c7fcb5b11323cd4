"""Run every benchmark script, one after the other, and gather their target
lines.

Each script's full output is shown as it runs; at the end come the machine
description and every `name: measured (target)` line, with the command that
produced it. `--markdown` prints that summary as the table used in
benchmarks/README.md.

    python benchmarks/run_all.py            # about 2 minutes on 2 cores
    python benchmarks/run_all.py --quick    # about 30 s
    python benchmarks/run_all.py --markdown --only bench_call bench_fib
"""

from __future__ import annotations

import argparse
import datetime
import os
import platform
import re
import shlex
import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
SCRIPTS = [
    "bench_call", "bench_throughput", "bench_create", "bench_timeout", "bench_cpu_timeout", "bench_placement",
    "bench_fib", "bench_floatstr", "bench_scripts", "bench_idle", "bench_debug",
]
TARGET_LINE = re.compile(r"^(?P<name>.+): (?P<measured>.+) \((?P<goal>[^()]+)\)$")


def machine() -> dict[str, str]:
    model = "unknown CPU"
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    model = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    kvm = sorted(m for m in os.listdir("/sys/module") if m.startswith("kvm")) if os.path.isdir("/sys/module") else []
    versions = []
    for dist in ("aionub", "uvloop", "wasmtime", "lupa", "quickjs"):
        try:
            from importlib.metadata import version

            versions.append(f"{dist} {version(dist)}")
        except Exception:
            versions.append(f"{dist} not installed")
    return {
        "uname -a": " ".join(platform.uname()),
        "nproc": str(os.cpu_count()),
        "CPU": model,
        "KVM modules": ", ".join(kvm) or "none",
        "Python": f"{platform.python_implementation()} {platform.python_version()}",
        "packages": ", ".join(versions),
    }


def loadavg() -> str:
    try:
        with open("/proc/loadavg") as f:
            return " ".join(f.read().split()[:3])
    except OSError:
        return "unknown"


def targets_of(output: str) -> list[tuple[str, str, str]]:
    """The target lines: the last block of the output (after its last blank line)."""
    block = output.rstrip("\n").split("\n\n")[-1]
    found = []
    for line in block.splitlines():
        m = TARGET_LINE.match(line.strip())
        if m:
            found.append((m["name"], m["measured"], m["goal"]))
    return found


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="pass --quick to every script")
    parser.add_argument("--only", nargs="+", choices=SCRIPTS, help="run only these scripts")
    parser.add_argument("--markdown", action="store_true", help="print the summary as a markdown table")
    opts = parser.parse_args()

    results: list[tuple[str, list[tuple[str, str, str]]]] = []
    failed = []
    started = datetime.datetime.now()
    for name in opts.only or SCRIPTS:
        argv = [sys.executable, str(HERE / f"{name}.py")] + (["--quick"] if opts.quick else [])
        shown = shlex.join(["python", f"benchmarks/{name}.py", *argv[2:]])
        print(f"\n===== {shown}   (load average {loadavg()})", flush=True)
        proc = subprocess.Popen(argv, stdout=subprocess.PIPE, text=True)
        assert proc.stdout is not None
        lines = []
        for line in proc.stdout:
            sys.stdout.write(line)
            sys.stdout.flush()
            lines.append(line)
        if proc.wait() != 0:
            failed.append(name)
        results.append((shown, targets_of("".join(lines))))

    info = machine()
    info["load average at the end"] = loadavg()
    print(f"\n===== summary ({started:%Y-%m-%d %H:%M}, {(datetime.datetime.now() - started).seconds} s)")
    if opts.markdown:
        for key, value in info.items():
            print(f"- {key}: `{value}`" if key == "uname -a" else f"- {key}: {value}")
        print("\n| target | measured | goal | command |\n| --- | --- | --- | --- |")
        for shown, targets in results:
            for name, measured, goal in targets:
                print(f"| {name} | {measured} | {goal} | `{shown}` |")
    else:
        for key, value in info.items():
            print(f"{key}: {value}")
        for shown, targets in results:
            print(f"\n{shown}")
            for name, measured, goal in targets:
                print(f"  {name}: {measured} ({goal})")
    if failed:
        print(f"\nfailed: {', '.join(failed)}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
