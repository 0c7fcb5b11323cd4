"""A float- and string-heavy C workload in the guest against the same C
compiled natively: the guest's C library (musl) against the host's (glibc).

`floatstr.c` prints n pseudo-random doubles with "%.17g" and reads them back
with strtod, prints and reads them again with "%.6e", sorts them as numbers
and as strings (qsort with strcmp) and sums some libm (sin, cos, exp, log1p,
atan2, pow, sqrt). The same file is compiled by the same gcc with the guest
SDK's code generation flags (`aionub._build.GUEST_CFLAGS`, less those a
shared library cannot use) into `.build/libfloatstr.so`, called through
ctypes, and by `aionub.build_guest` into `.build/floatstr.elf` (through
`floatstr_guest.c`, which exports it). Both sides must produce the same hash
of the sorted strings and no failed round trip; their libm sums may differ
in the last digits.

Samples alternate, as in bench_fib.py: one `await sb.call("floatstr_run",
n, seed)` (one call round trip included, well under 1% of it), then one
native call, --reps pairs per round. The target is the median over pairs of
(guest time ÷ native time); the p50 of each side is shown too. Here the time
ratio is the figure (lower is better): it measures the libraries as much as
the machine code, since most of the time is spent inside snprintf, strtod,
qsort and libm.

    python benchmarks/bench_floatstr.py            # about 5 s on 2 cores
    python benchmarks/bench_floatstr.py --quick    # about 2 s
"""

from __future__ import annotations

import argparse
import asyncio
import ctypes
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import BUILD_DIR, HERE, build_c, fmt_us, median, percentile, require_kvm, target  # noqa: E402

import aionub  # noqa: E402
from aionub import _build  # noqa: E402

WORKLOAD = HERE / "floatstr.c"
GUEST_WRAPPER = HERE / "floatstr_guest.c"
SEED = 12345
# Guest flags a hosted shared library cannot (or need not) use.
_NOT_NATIVE = {"-ffreestanding", "-nostdinc", "-fno-pic", "-fno-pie",
               "-Werror=implicit-function-declaration"}


def build_native() -> tuple[ctypes.CDLL, list[str]]:
    flags = [f for f in _build.GUEST_CFLAGS if f not in _NOT_NATIVE]
    path = build_c("libfloatstr.so", [WORKLOAD], cflags=flags, ldflags=["-lm"], shared=True)
    lib = ctypes.CDLL(str(path))
    lib.floatstr_run.argtypes = [ctypes.c_int64, ctypes.c_int64]
    lib.floatstr_run.restype = ctypes.c_char_p
    return lib, flags


def sdk_has_libc() -> bool:
    return any(rel.endswith("/math.h") for rel in _build.SdkLayout.installed().files())


def build_guest() -> Path:
    out = BUILD_DIR / "floatstr.elf"
    sdk = _build.SdkLayout.installed()
    inputs = [WORKLOAD, GUEST_WRAPPER, *sdk.files().values()]
    if not out.exists() or any(p.stat().st_mtime_ns > out.stat().st_mtime_ns for p in inputs):
        aionub.build_guest([GUEST_WRAPPER], out, include_dirs=[HERE])
    return out


def check_same(guest: str, native: str) -> None:
    """Same hash and round-trip count; libm sums equal to ~1e-12."""
    g_hash, g_bad, g_sum = guest.split()
    n_hash, n_bad, n_sum = native.split()
    if (g_hash, g_bad) != (n_hash, n_bad) or g_bad != "0":
        raise RuntimeError(f"the two sides disagree: guest {guest!r}, native {native!r}")
    if abs(float(g_sum) - float(n_sum)) > 1e-12 * abs(float(n_sum)):
        raise RuntimeError(f"libm sums differ beyond 1e-12: guest {g_sum}, native {n_sum}")


async def measure(lib: ctypes.CDLL, elf: Path, n: int, reps: int, rounds: int) -> tuple[list[float], list[float]]:
    """Alternating samples: guest, native, guest, native... (µs)."""
    clock = time.perf_counter_ns
    guest_s: list[float] = []
    native_s: list[float] = []
    async with aionub.Sandbox.create(elf, memory_size=64 * 1024 * 1024) as sb:
        # Warm-up; also checks both sides compute the same thing.
        guest = await sb.call("floatstr_run", n, SEED)
        native = lib.floatstr_run(n, SEED).decode()
        check_same(guest, native)
        print(f"result: {guest}  (native: {native})")
        for r in range(rounds):
            for i in range(reps):
                seed = SEED + i
                t0 = clock()
                await sb.call("floatstr_run", n, seed)
                t1 = clock()
                lib.floatstr_run(n, seed)
                t2 = clock()
                guest_s.append((t1 - t0) / 1000)
                native_s.append((t2 - t1) / 1000)
            print(f"round {r + 1}: guest p50 {fmt_us(median(guest_s[-reps:]))},"
                  f" native p50 {fmt_us(median(native_s[-reps:]))}", flush=True)
    return guest_s, native_s


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--n", type=int, default=10_000, help="doubles per call (default 10000)")
    parser.add_argument("--reps", type=int, default=10, help="calls per side per round (default 10)")
    parser.add_argument("--rounds", type=int, default=6, help="alternating rounds (default 6)")
    parser.add_argument("--quick", action="store_true", help="5 calls, 3 rounds")
    opts = parser.parse_args()
    if opts.quick:
        opts.reps, opts.rounds = 5, 3
    if opts.reps < 1 or opts.rounds < 1 or opts.n < 2:
        parser.error("--reps and --rounds must be >= 1, --n >= 2")
    require_kvm()
    if not sdk_has_libc():
        print("bench_floatstr.py needs a guest SDK with its C library (musl): this aionub has none",
              file=sys.stderr)
        return 2
    lib, flags = build_native()
    elf = build_guest()

    guest_s, native_s = asyncio.run(measure(lib, elf, opts.n, opts.reps, opts.rounds))
    g, n = percentile(guest_s, 0.5), percentile(native_s, 0.5)
    paired = median(gst / nat for gst, nat in zip(guest_s, native_s))
    print(f"\nfloatstr_run({opts.n}), p50 of {len(guest_s)} calls per side:")
    print(f"  guest (musl), await sb.call(...)        {fmt_us(g):>10}   (p90 {fmt_us(percentile(guest_s, 0.9))})")
    print(f"  native (glibc), same C, gcc {' '.join(f for f in flags if f.startswith('-O'))}"
          f"          {fmt_us(n):>10}   (p90 {fmt_us(percentile(native_s, 0.9))})")
    print(f"  time, guest p50 ÷ native p50:              {g / n:.3f}")
    print(f"  time, fastest guest ÷ fastest native:      {min(guest_s) / min(native_s):.3f}")
    print()
    target("float/string workload, guest ÷ native (time)", f"{paired:.3f}", "no goal: musl against glibc")
    return 0


if __name__ == "__main__":
    sys.exit(main())
