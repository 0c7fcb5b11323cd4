"""A float- and string-heavy C workload in the guest against the same C
compiled natively, with the same C library (musl) and with the host's (glibc).

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

A third side, `.build/floatstr_musl`, is the same file linked natively
with the guest SDK's own musl (`floatstr_musl.c` gives musl a Linux system
call and a start): the same machine code and the same C library as the
guest, outside the VM. That pair is the target: it measures what running in
the sandbox costs. Against glibc the figure also measures the libraries
(most of the time is spent inside snprintf, strtod, qsort and libm, and
glibc's are faster than musl's), so that ratio has no goal.

Every side times floatstr_run from the inside (`floatstr_timed`,
CLOCK_MONOTONIC), so no call overhead is counted. Each round takes --reps
samples of each side in turn: guest, glibc, then the musl executable. The
figures are p50s over all rounds, and speed = native time ÷ guest time.

    python benchmarks/bench_floatstr.py            # about 5 s on 2 cores
    python benchmarks/bench_floatstr.py --quick    # about 2 s
"""

from __future__ import annotations

import argparse
import asyncio
import ctypes
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import (  # noqa: E402
    BUILD_DIR,
    HERE,
    build_c,
    build_musl_c,
    fmt_us,
    median,
    percentile,
    require_kvm,
    target,
)

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
    lib.floatstr_timed.argtypes = [ctypes.c_int64, ctypes.c_int64]
    lib.floatstr_timed.restype = ctypes.c_int64
    return lib, flags


def build_native_musl() -> Path:
    """floatstr.c with floatstr_musl.c, static, against the SDK's libc.a."""
    return build_musl_c("floatstr_musl", [WORKLOAD, HERE / "floatstr_musl.c"], cflags=_build.GUEST_CFLAGS)


def run_native_musl(exe: Path, n: int, seed: int, reps: int) -> list[float]:
    out = subprocess.run([str(exe), str(n), str(seed), str(reps)], capture_output=True, text=True, check=True)
    return [int(line) / 1000 for line in out.stdout.split()]


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


async def measure(lib: ctypes.CDLL, elf: Path, musl: Path, n: int, reps: int,
                  rounds: int) -> tuple[list[float], list[float], list[float]]:
    """Samples (µs) of the guest, native glibc and native musl, by rounds."""
    guest_s: list[float] = []
    glibc_s: list[float] = []
    musl_s: list[float] = []
    async with aionub.Sandbox.create(elf, memory_size=64 * 1024 * 1024) as sb:
        # Warm-up; also checks both sides compute the same thing.
        guest = await sb.call("floatstr_run", n, SEED)
        native = lib.floatstr_run(n, SEED).decode()
        check_same(guest, native)
        print(f"result: {guest}  (native: {native})")
        run_native_musl(musl, n, SEED, 1)
        for r in range(rounds):
            for i in range(reps):
                guest_s.append(await sb.call("floatstr_timed", n, SEED + i) / 1000)
            for i in range(reps):
                glibc_s.append(lib.floatstr_timed(n, SEED + i) / 1000)
            musl_s += run_native_musl(musl, n, SEED, reps)
            print(f"round {r + 1}: guest p50 {fmt_us(median(guest_s[-reps:]))},"
                  f" native musl p50 {fmt_us(median(musl_s[-reps:]))},"
                  f" native glibc p50 {fmt_us(median(glibc_s[-reps:]))}", flush=True)
    return guest_s, glibc_s, musl_s


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
    musl = build_native_musl()
    elf = build_guest()

    guest_s, glibc_s, musl_s = asyncio.run(measure(lib, elf, musl, opts.n, opts.reps, opts.rounds))
    g, m, c = (percentile(x, 0.5) for x in (guest_s, musl_s, glibc_s))
    print(f"\nfloatstr_run({opts.n}), timed inside each side, p50 of {len(guest_s)} runs per side:")
    print(f"  guest (musl), in a sandbox        {fmt_us(g):>10}   (fastest {fmt_us(min(guest_s))})")
    print(f"  native, the SDK's musl            {fmt_us(m):>10}   (fastest {fmt_us(min(musl_s))})")
    print(f"  native, glibc                     {fmt_us(c):>10}   (fastest {fmt_us(min(glibc_s))})")
    print(f"  speed, native musl ÷ guest:       {m / g:.3f}   (fastest: {min(musl_s) / min(guest_s):.3f})")
    print(f"  speed, native glibc ÷ guest:      {c / g:.3f}")
    print()
    target("float/string workload in the guest ÷ native, same musl (speed)", f"{m / g:.3f}", "≥ 0.85")
    target("float/string workload in the guest ÷ native glibc (speed)", f"{c / g:.3f}",
           "no goal: musl against glibc")
    return 0


if __name__ == "__main__":
    sys.exit(main())
