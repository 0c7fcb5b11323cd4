"""Build and run ``benchmarks/floor.c``, the raw-KVM floor program.

Benchmark scripts compare aionub against these floors measured in the same run::

    from _floor import run_floor
    floor = run_floor("roundtrip", 20000)   # {"name": "roundtrip", "p50_us": ...}

Standard library only. The binary is cached in ``benchmarks/.build/`` and rebuilt
whenever ``floor.c`` or ``floor_vm.h`` is newer than it. Set ``CC`` to choose the
compiler.
"""

from __future__ import annotations

import json
import os
import shlex
import subprocess
from pathlib import Path

__all__ = ["FLOOR_SOURCE", "build_floor", "run_floor"]

_HERE = Path(__file__).resolve().parent
FLOOR_SOURCE = _HERE / "floor.c"
_FLOOR_HEADER = _HERE / "floor_vm.h"
_BUILD_DIR = _HERE / ".build"
_BINARY = _BUILD_DIR / "floor"
_CFLAGS = ["-O2", "-std=gnu11", "-Wall", "-Wextra"]


def _is_fresh(binary: Path, *sources: Path) -> bool:
    try:
        built = binary.stat().st_mtime_ns
        return all(built >= source.stat().st_mtime_ns for source in sources)
    except FileNotFoundError:
        return False


def build_floor() -> Path:
    """Compile floor.c if needed and return the path of the binary."""
    if not FLOOR_SOURCE.is_file():
        raise RuntimeError(f"floor source not found: {FLOOR_SOURCE}")
    if _is_fresh(_BINARY, FLOOR_SOURCE, _FLOOR_HEADER):
        return _BINARY

    _BUILD_DIR.mkdir(parents=True, exist_ok=True)
    # Build under a private name, then rename: concurrent builders never see a
    # half-written binary.
    tmp = _BUILD_DIR / f"floor.{os.getpid()}.tmp"
    cc = shlex.split(os.environ.get("CC", "gcc"))
    cmd = [*cc, *_CFLAGS, "-o", str(tmp), str(FLOOR_SOURCE), "-lpthread", "-lrt"]
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
    except OSError as exc:
        raise RuntimeError(f"cannot run the C compiler {cc[0]!r}: {exc}") from exc
    if proc.returncode != 0:
        tmp.unlink(missing_ok=True)
        raise RuntimeError(
            f"building the floor program failed ({shlex.join(cmd)}):\n"
            f"{proc.stderr.strip()}"
        )
    os.replace(tmp, _BINARY)
    return _BINARY


def run_floor(subcommand: str, *args: object, timeout: float | None = 600) -> dict:
    """Run ``floor SUBCOMMAND ARGS...`` and return its JSON line as a dict.

    Raises RuntimeError (with the program's stderr) if it fails, times out or
    does not print exactly one JSON object.
    """
    cmd = [str(build_floor()), subcommand, *(str(a) for a in args)]
    shown = shlex.join(["floor", *cmd[1:]])
    try:
        proc = subprocess.run(
            cmd, capture_output=True, text=True, timeout=timeout, check=False
        )
    except subprocess.TimeoutExpired as exc:
        raise RuntimeError(f"{shown} did not finish within {timeout} s") from exc
    if proc.returncode != 0:
        raise RuntimeError(
            f"{shown} exited with status {proc.returncode}:\n{proc.stderr.strip()}"
        )

    lines = [line for line in proc.stdout.splitlines() if line.strip()]
    if len(lines) != 1:
        raise RuntimeError(
            f"{shown} printed {len(lines)} lines, expected one JSON line:\n"
            f"{proc.stdout}{proc.stderr}"
        )
    try:
        result = json.loads(lines[0])
    except json.JSONDecodeError as exc:
        raise RuntimeError(f"{shown} printed invalid JSON: {lines[0]!r}") from exc
    if not isinstance(result, dict):
        raise RuntimeError(f"{shown} printed {lines[0]!r}, not a JSON object")
    return result
