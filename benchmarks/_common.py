"""Shared helpers for the benchmark scripts: C builds, statistics, event
loops, optional dependencies and the target lines every script ends with.

Standard library only (plus aionub, uvloop and wasmtime where a script asks
for them). Build products go to ``benchmarks/.build/``.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import hashlib
import mmap
import os
import shlex
import subprocess
import sys
from collections.abc import Awaitable, Callable, Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any, TypeVar

__all__ = [
    "one_cpu",
    "HERE",
    "BUILD_DIR",
    "BENCH_EXTRA_HINT",
    "build_c",
    "open_rawkvm",
    "percentile",
    "summary",
    "median",
    "target",
    "ratio",
    "loops_available",
    "run_on",
    "require_wasmtime",
    "require_kvm",
    "fmt_us",
    "guest_memory",
    "resident_pages",
    "vcpu_threads",
    "place_threads",
    "restored_affinity",
]

HERE = Path(__file__).resolve().parent
BUILD_DIR = HERE / ".build"
BENCH_EXTRA_HINT = "pip install '.[bench]'  (from the aionub source tree)"

T = TypeVar("T")


# ---------------------------------------------------------------------------
# C builds


def build_c(
    output_name: str,
    sources: Sequence[Path],
    *,
    depends: Iterable[Path] = (),
    cflags: Sequence[str] = ("-O2", "-std=gnu11", "-Wall", "-Wextra"),
    ldflags: Sequence[str] = (),
    shared: bool = False,
) -> Path:
    """Compile ``sources`` into ``.build/<output_name>`` unless an up-to-date
    build exists (newer than every source and dependency, same command).
    ``CC`` chooses the compiler. Returns the path of the product."""
    cc = shlex.split(os.environ.get("CC", "gcc"))
    flags = [*cflags, *(["-shared", "-fPIC"] if shared else [])]
    BUILD_DIR.mkdir(parents=True, exist_ok=True)
    out = BUILD_DIR / output_name
    stamp = BUILD_DIR / f"{output_name}.cmd"
    inputs = [Path(s) for s in sources] + [Path(d) for d in depends]
    key = hashlib.sha256(shlex.join([*cc, *flags, *map(str, inputs), *ldflags]).encode()).hexdigest()
    try:
        built = out.stat().st_mtime_ns
        fresh = stamp.read_text() == key and all(p.stat().st_mtime_ns <= built for p in inputs)
    except FileNotFoundError:
        fresh = False
    if fresh:
        return out
    # Build under a private name, then rename: concurrent builders never see a
    # half-written file.
    tmp = BUILD_DIR / f"{output_name}.{os.getpid()}.tmp"
    cmd = [*cc, *flags, "-o", str(tmp), *map(str, sources), *ldflags]
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
    except OSError as exc:
        raise RuntimeError(f"cannot run the C compiler {cc[0]!r}: {exc}") from exc
    if proc.returncode != 0:
        tmp.unlink(missing_ok=True)
        raise RuntimeError(f"build failed ({shlex.join(cmd)}):\n{proc.stderr.strip()}")
    os.replace(tmp, out)
    stamp.write_text(key)
    return out


_rawkvm: ctypes.CDLL | None = None


def build_musl_c(output_name: str, sources: Sequence[Path], *, cflags: Sequence[str],
                 depends: Iterable[Path] = ()) -> Path:
    """A static Linux executable of ``sources`` on the guest SDK's own musl
    (its headers and libc.a, with ``musl_linux.c``): the same C library as a
    guest, outside the VM. ``cflags`` are the code generation flags (the
    guest's, typically: musl sets the stack protector's canary up natively
    too)."""
    from aionub import _build

    sdk = _build.SdkLayout.installed()
    cc_include = subprocess.run(["gcc", "-print-file-name=include"], capture_output=True, text=True,
                                check=True).stdout.strip()
    return build_c(
        output_name, [*sources, HERE / "musl_linux.c"], depends=[*depends, sdk.libc_archive],
        cflags=[*cflags, "-isystem", str(sdk.libc_include), "-isystem", cc_include],
        ldflags=["-static", "-no-pie", "-nostdlib", str(sdk.libc_archive), "-lgcc"],
    )


def open_rawkvm() -> ctypes.CDLL:
    """Build and load ``rawkvm.c`` (one raw CPL3 VM, see floor_vm.h) and open
    its VM. ``lib.rk_roundtrip()`` is then one KVM_RUN round trip; ctypes
    releases the GIL around it. One VM per process."""
    global _rawkvm
    if _rawkvm is not None:
        return _rawkvm
    path = build_c(
        "librawkvm.so",
        [HERE / "rawkvm.c"],
        depends=[HERE / "floor_vm.h"],
        cflags=("-O2", "-std=gnu11", "-Wall", "-Wextra", "-fvisibility=hidden"),
        shared=True,
    )
    lib = ctypes.CDLL(str(path))
    lib.rk_open.argtypes = [ctypes.c_char_p, ctypes.c_size_t]
    lib.rk_open.restype = ctypes.c_int
    lib.rk_roundtrip.argtypes = []
    lib.rk_roundtrip.restype = ctypes.c_int
    lib.rk_close.argtypes = []
    lib.rk_close.restype = None
    err = ctypes.create_string_buffer(256)
    if lib.rk_open(err, len(err)) != 0:
        raise RuntimeError(err.value.decode(errors="replace"))
    _rawkvm = lib
    return lib


# ---------------------------------------------------------------------------
# Statistics (nearest rank, as floor.c)


def percentile(samples: Sequence[float], q: float) -> float:
    """Nearest-rank percentile, q in [0, 1]."""
    if not samples:
        raise ValueError("no samples")
    ordered = sorted(samples)
    rank = max(1, min(len(ordered), int(q * len(ordered) + 0.999999)))
    return ordered[rank - 1]


def summary(samples: Sequence[float]) -> dict[str, float]:
    ordered = sorted(samples)
    return {
        "n": len(ordered),
        "p50": percentile(ordered, 0.50),
        "p90": percentile(ordered, 0.90),
        "p99": percentile(ordered, 0.99),
        "mean": sum(ordered) / len(ordered),
        "min": ordered[0],
        "max": ordered[-1],
    }


def median(values: Iterable[float]) -> float:
    ordered = sorted(values)
    if not ordered:
        raise ValueError("no values")
    mid = len(ordered) // 2
    return ordered[mid] if len(ordered) % 2 else (ordered[mid - 1] + ordered[mid]) / 2


def fmt_us(value: float) -> str:
    return f"{value:,.1f} µs" if abs(value) < 10_000 else f"{value / 1000:,.2f} ms"


def ratio(a: float, b: float) -> str:
    if b == 0:
        return "n/a (zero floor)"
    return f"{a / b:.2f}"


def target(name: str, measured: str, goal: str) -> None:
    """The closing line for one target: ``name: measured (target)``."""
    print(f"{name}: {measured} ({goal})", flush=True)


# ---------------------------------------------------------------------------
# Event loops


def loops_available() -> list[str]:
    """``["uvloop", "asyncio"]``, or just asyncio when uvloop is missing."""
    try:
        import uvloop  # noqa: F401
    except ImportError:
        print(f"note: uvloop is not installed, measuring asyncio only ({BENCH_EXTRA_HINT})",
              file=sys.stderr)
        return ["asyncio"]
    return ["uvloop", "asyncio"]


def run_on(loop_name: str, main: Callable[[], Awaitable[T]]) -> T:
    """Run ``main()`` to completion on a fresh event loop of that kind."""
    if loop_name == "uvloop":
        import uvloop

        return uvloop.run(main())  # type: ignore[arg-type]
    if loop_name == "asyncio":
        return asyncio.run(main())  # type: ignore[arg-type]
    raise ValueError(f"unknown event loop {loop_name!r}")


# ---------------------------------------------------------------------------
# Preconditions


def require_kvm() -> None:
    if not os.path.exists("/dev/kvm"):
        sys.exit("/dev/kvm does not exist on this machine; nothing to measure")


def require_wasmtime() -> Any:
    """Import wasmtime or exit with a message saying how to install it."""
    try:
        import wasmtime
    except ImportError:
        sys.exit(
            "this benchmark compares against wasmtime-py, which is not installed.\n"
            f"Install the benchmark extras: {BENCH_EXTRA_HINT}\n"
            "or pass --no-wasmtime to skip that comparison."
        )
    return wasmtime


# ---------------------------------------------------------------------------
# Guest memory residency

_libc = ctypes.CDLL(None, use_errno=True)
_libc.mincore.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_char_p]
_libc.mincore.restype = ctypes.c_int


def resident_pages(address: int, size: int) -> int:
    """Pages of [address, address + size) that are resident (mincore(2))."""
    page = mmap.PAGESIZE
    vec = ctypes.create_string_buffer((size + page - 1) // page)
    if _libc.mincore(ctypes.c_void_p(address), size, vec) != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"mincore({address:#x}, {size}) failed: {os.strerror(err)}")
    return sum(b & 1 for b in vec.raw)


def guest_memory(sb: Any) -> tuple[int, int]:
    """(address, size) of a sandbox's guest memory mapping. Uses private
    attributes of aionub: this is a benchmark, not an API."""
    from aionub import _native

    native = sb._native
    address = int(_native.ffi.cast("uintptr_t", _native.lib.ab_sandbox_memory(native.ptr)))
    return address, int(native.layout.memory_size)


# ---------------------------------------------------------------------------
# Thread placement


def vcpu_threads() -> set[int]:
    """Thread ids of this process's aionub vCPU threads (by thread name)."""
    found = set()
    for tid in os.listdir("/proc/self/task"):
        try:
            with open(f"/proc/self/task/{tid}/comm") as f:
                if f.read().strip() == "aionub-vcpu":
                    found.add(int(tid))
        except OSError:
            pass
    return found


def place_threads(vcpu_tid: int, placement: str) -> None:
    """Pin the calling thread (the event loop's) to the first allowed CPU and
    the vCPU thread to the same CPU ("same") or to the second one ("split")."""
    cpus = sorted(os.sched_getaffinity(0))
    if placement == "split" and len(cpus) < 2:
        raise RuntimeError("placement 'split' needs two CPUs")
    os.sched_setaffinity(0, {cpus[0]})
    os.sched_setaffinity(vcpu_tid, {cpus[0] if placement == "same" else cpus[1]})


@contextlib.contextmanager
def one_cpu() -> Iterator[None]:
    """Pin this thread (and so every thread or child process it starts) to one
    CPU, restoring the previous affinity on exit."""
    with restored_affinity():
        os.sched_setaffinity(0, {min(os.sched_getaffinity(0))})
        yield


@contextlib.contextmanager
def restored_affinity() -> Iterator[None]:
    """Restore the calling thread's CPU affinity on exit."""
    before = os.sched_getaffinity(0)
    try:
        yield
    finally:
        os.sched_setaffinity(0, before)
