"""Cold sandbox creation and restore from a snapshot, against raw C creation.

Per round, interleaved:

  raw C     floor.c `create N`: KVM_CREATE_VM, guest memory, memory slot,
            vCPU, CPUID, page tables, GDT, TSS, code, registers, then the
            first KVM_RUN up to the guest's first `out` (8 MiB, as aionub's
            default); teardown is outside the sample
  cold      `sb = await Sandbox.create(DEMO_GUEST)` then `await sb.call("noop")`
            (create: open /dev/kvm checks, read and load the ELF, build the VM,
            start the vCPU thread, run the guest's runtime to READY, decode its
            function table; then one call); `aclose()` is outside the sample
  restore   `await sb.restore(snapshot)` of a snapshot taken right after
            creation, after one `counter()` call changed guest state (what a
            pool does between users), and after a `spin` call was killed by a
            timeout (what a pool does with a poisoned sandbox)
  spawn     `sb = await Sandbox.spawn(snapshot)` then `await sb.call("noop")`,
            the snapshot taken of a demo sandbox right after its first call:
            guest memory mapped copy-on-write from the snapshot's shared
            image, vCPU state loaded, no guest initialisation; `aclose()` is
            outside the sample
  pool      `async with pool.acquire() as sb: await sb.call("counter")` on a
            one-sandbox `SandboxPool`: checkout, one call, and the reset to
            the pool's snapshot on release

Targets: cold create + first call ÷ raw C create + first entry; spawn +
first call ÷ raw C create + first entry; restore ÷
cold create (`Sandbox.create` alone: both leave a sandbox ready for a call);
and a pool cycle ÷ cold create + first call (both give the user a sandbox
that answered one call). Each is a ratio of p50s, the medians over rounds.

Diagnostic: the floor's guest touches one code page before its first exit;
a real guest's runtime touches its data, stack, heap and buffers while it
initialises, and on nested KVM each first touch of a page costs a few µs.
A spawned sandbox skips initialisation, but its first call still touches
each page it uses for the first time in this VM (about 40 for the demo's
noop: code, stack, buffers, runtime data), which the created sandbox's
initialisation had already paid for.
`floor create N 8 P` has the raw guest write to P pages first, P being the
number of guest pages resident in a demo sandbox after its first call (an
upper bound on what its guest touched), which gives the floor for a guest
of this size. And, through aionub's internals (skipped if they change),
Sandbox.create split into its native part on the calling thread and the
boot that follows.

    python benchmarks/bench_create.py            # about 10 s on 2 cores
    python benchmarks/bench_create.py --quick    # about 1 s
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import (  # noqa: E402
    fmt_us,
    guest_memory,
    loops_available,
    median,
    percentile,
    require_kvm,
    resident_pages,
    run_on,
    target,
)
from _floor import run_floor  # noqa: E402

import aionub  # noqa: E402

HAVE_RESTORE = hasattr(aionub.Sandbox, "restore") and hasattr(aionub.Sandbox, "snapshot")
HAVE_POOL = hasattr(aionub, "SandboxPool")
HAVE_SPAWN = hasattr(aionub.Sandbox, "spawn")


async def measure(n: int, with_restore: bool) -> dict[str, float]:
    clock = time.perf_counter_ns
    guest = aionub.DEMO_GUEST
    create_s, first_s, total_s, close_s = [], [], [], []
    for _ in range(3):  # warm-up
        async with aionub.Sandbox.create(guest) as sb:
            await sb.call("noop")
    for _ in range(n):
        t0 = clock()
        sb = await aionub.Sandbox.create(guest)
        t1 = clock()
        await sb.call("noop")
        t2 = clock()
        await sb.aclose()
        t3 = clock()
        create_s.append((t1 - t0) / 1000)
        first_s.append((t2 - t1) / 1000)
        total_s.append((t2 - t0) / 1000)
        close_s.append((t3 - t2) / 1000)
    out = {
        "create": percentile(create_s, 0.5),
        "first_call": percentile(first_s, 0.5),
        "cold": percentile(total_s, 0.5),
        "close": percentile(close_s, 0.5),
    }
    if not with_restore:
        return out

    restore_s, restore_call_s, poisoned_s, snap_s = [], [], [], []
    async with aionub.Sandbox.create(guest) as sb:
        await sb.call("noop")
        for _ in range(3):
            t0 = clock()
            snap = await sb.snapshot()
            snap_s.append((clock() - t0) / 1000)
        for _ in range(n):
            if await sb.call("counter") != 1:
                raise RuntimeError("restore did not bring the guest's counter back")
            t0 = clock()
            await sb.restore(snap)
            t1 = clock()
            await sb.call("noop")
            t2 = clock()
            restore_s.append((t1 - t0) / 1000)
            restore_call_s.append((t2 - t0) / 1000)
        for _ in range(max(5, n // 5)):
            try:
                await sb.call("spin", timeout=0.001)
            except aionub.CallTimeout:
                pass
            if not sb.poisoned:
                raise RuntimeError("a timed-out call did not poison the sandbox")
            t0 = clock()
            await sb.restore(snap)
            poisoned_s.append((clock() - t0) / 1000)
    if HAVE_SPAWN:
        spawn_s, spawn_first_s, spawn_total_s = [], [], []
        for i in range(n + 3):
            t0 = clock()
            sb = await aionub.Sandbox.spawn(snap)
            t1 = clock()
            await sb.call("noop")
            t2 = clock()
            await sb.aclose()
            if i >= 3:
                spawn_s.append((t1 - t0) / 1000)
                spawn_first_s.append((t2 - t1) / 1000)
                spawn_total_s.append((t2 - t0) / 1000)
        out.update(spawn=percentile(spawn_s, 0.5), spawn_first_call=percentile(spawn_first_s, 0.5),
                   spawn_cold=percentile(spawn_total_s, 0.5))
    if HAVE_POOL:
        cycle_s = []
        async with aionub.SandboxPool(guest, size=1) as pool:
            for i in range(n + 3):
                t0 = clock()
                async with pool.acquire() as sb:
                    if await sb.call("counter") != 1:
                        raise RuntimeError("the pool handed out a sandbox that was not reset")
                if i >= 3:
                    cycle_s.append((clock() - t0) / 1000)
        out["pool_cycle"] = percentile(cycle_s, 0.5)
    out.update(
        restore=percentile(restore_s, 0.5),
        restore_call=percentile(restore_call_s, 0.5),
        restore_poisoned=percentile(poisoned_s, 0.5),
        snapshot=percentile(snap_s, 0.5),
        snapshot_kib=snap.nbytes / 1024,
    )
    return out


async def create_phases(n: int) -> dict[str, float] | None:
    """Sandbox.create split in two, through aionub's internals (None if they
    changed): the native part on the calling thread (ELF checks and load,
    guest memory, starting the vCPU thread) and the boot (VM creation on the
    vCPU thread, the guest's initialisation up to READY, the function table)."""
    try:
        from aionub._config import SandboxConfig
        from aionub._native import NativeSandbox
        from aionub._sandbox import _read_guest

        options = SandboxConfig()
        image, label = _read_guest(aionub.DEMO_GUEST)
        clock = time.perf_counter_ns
        native_s, boot_s = [], []
        for i in range(n + 3):
            t0 = clock()
            native = NativeSandbox(options.to_native(), image)
            sb = aionub.Sandbox(native, options, {}, label)
            t1 = clock()
            await sb._engine.boot()
            t2 = clock()
            await sb.aclose()
            if i >= 3:
                native_s.append((t1 - t0) / 1000)
                boot_s.append((t2 - t1) / 1000)
        return {"native": percentile(native_s, 0.5), "boot": percentile(boot_s, 0.5)}
    except (ImportError, AttributeError, TypeError):
        return None


async def demo_resident_pages() -> int:
    async with aionub.Sandbox.create(aionub.DEMO_GUEST) as sb:
        await sb.call("noop")
        return resident_pages(*guest_memory(sb))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--n", type=int, default=200, help="creations per measurement (default 200)")
    parser.add_argument("--rounds", type=int, default=5, help="interleaved rounds (default 5)")
    parser.add_argument("--quick", action="store_true", help="50 creations, 2 rounds")
    opts = parser.parse_args()
    if opts.quick:
        opts.n, opts.rounds = 50, 2
    if opts.n < 1 or opts.rounds < 1:
        parser.error("--n and --rounds must be >= 1")
    require_kvm()
    loops = loops_available()
    if not HAVE_RESTORE:
        print("note: this aionub has no Sandbox.snapshot()/restore(); restore is not measured",
              file=sys.stderr)

    touch = asyncio.run(demo_resident_pages())
    res: dict[str, list[float]] = {}
    started = time.monotonic()
    for r in range(opts.rounds):
        touched = run_floor("create", opts.n, 8, touch)
        res.setdefault("raw_touch", []).append(touched["p50_us"])
        res.setdefault("raw_touch_entry", []).append(touched["first_entry_p50_us"])
        floor = run_floor("create", opts.n)
        res.setdefault("raw", []).append(floor["p50_us"])
        res.setdefault("raw_setup", []).append(floor["setup_p50_us"])
        res.setdefault("raw_entry", []).append(floor["first_entry_p50_us"])
        res.setdefault("raw_teardown", []).append(floor["teardown_p50_us"])
        for loop in loops:
            out = run_on(loop, lambda: measure(opts.n, HAVE_RESTORE))
            for key, value in out.items():
                res.setdefault(f"{key}_{loop}", []).append(value)
        phases = asyncio.run(create_phases(max(20, opts.n // 4)))
        if phases is not None:
            res.setdefault("phase_native", []).append(phases["native"])
            res.setdefault("phase_boot", []).append(phases["boot"])
        print(f"round {r + 1}: raw {res['raw'][-1]:.0f} µs, "
              + ", ".join(f"cold {loop} {res[f'cold_{loop}'][-1]:.0f} µs" for loop in loops)
              + ("".join(f", restore {loop} {res[f'restore_{loop}'][-1]:.0f} µs" for loop in loops)
                 if HAVE_RESTORE else ""), flush=True)
    elapsed = time.monotonic() - started

    med = {k: median(v) for k, v in res.items()}
    print(f"\np50 of {opts.n}, median of {opts.rounds} rounds ({elapsed:.0f} s):")
    print(f"  raw C create + first entry (8 MiB)          {fmt_us(med['raw']):>10}"
          f"   (setup {fmt_us(med['raw_setup'])}, first entry {fmt_us(med['raw_entry'])};"
          f" teardown {fmt_us(med['raw_teardown'])})")
    label = f"raw C, guest touching {touch} pages first"
    print(f"  {label:<43} {fmt_us(med['raw_touch']):>10}   (first entry {fmt_us(med['raw_touch_entry'])})")
    for loop in loops:
        print(f"  aionub cold create + first call, {loop:<8}   {fmt_us(med[f'cold_{loop}']):>10}"
              f"   (Sandbox.create {fmt_us(med[f'create_{loop}'])}, first call"
              f" {fmt_us(med[f'first_call_{loop}'])}; aclose {fmt_us(med[f'close_{loop}'])})")
    if HAVE_RESTORE:
        for loop in loops:
            print(f"  aionub restore, {loop:<8}                    {fmt_us(med[f'restore_{loop}']):>10}"
                  f"   (+ first call {fmt_us(med[f'restore_call_{loop}'])}; after a timeout"
                  f" {fmt_us(med[f'restore_poisoned_{loop}'])}; snapshot"
                  f" {fmt_us(med[f'snapshot_{loop}'])}, {med[f'snapshot_kib_{loop}']:.0f} KiB)")
            if f"spawn_cold_{loop}" in med:
                label = f"aionub spawn + first call, {loop}"
                print(f"  {label:<43} {fmt_us(med[f'spawn_cold_{loop}']):>10}"
                      f"   (Sandbox.spawn {fmt_us(med[f'spawn_{loop}'])}, first call"
                      f" {fmt_us(med[f'spawn_first_call_{loop}'])})")
            if f"pool_cycle_{loop}" in med:
                label = f"aionub pool acquire + call + release, {loop}"
                print(f"  {label:<43} {fmt_us(med[f'pool_cycle_{loop}']):>10}")
    if "phase_native" in med:
        print(f"  Sandbox.create on asyncio, split: native part {fmt_us(med['phase_native'])}"
              f" (ELF, guest memory, vCPU thread start), boot {fmt_us(med['phase_boot'])}"
              f" (VM on the vCPU thread + guest init to READY + function table)")
    for loop in loops:
        print(f"  aionub cold create + first call on {loop} ÷ raw C touching {touch} pages:"
              f" {med[f'cold_{loop}'] / med['raw_touch']:.2f}")
    for loop in loops:
        if f"spawn_cold_{loop}" in med:
            print(f"  aionub spawn + first call on {loop} ÷ raw C touching {touch} pages:"
                  f" {med[f'spawn_cold_{loop}'] / med['raw_touch']:.2f}")
    print()
    for loop in loops:
        target(f"cold Sandbox.create + first call on {loop} ÷ raw C create + first entry",
               f"{med[f'cold_{loop}'] / med['raw']:.2f}", "≤ 1.3")
    for loop in loops:
        if f"spawn_cold_{loop}" in med:
            target(f"Sandbox.spawn + first call on {loop} ÷ raw C create + first entry",
                   f"{med[f'spawn_cold_{loop}'] / med['raw']:.2f}", "≤ 1.15")
    for loop in loops:
        if HAVE_RESTORE:
            target(f"restore ÷ cold create on {loop}",
                   f"{med[f'restore_{loop}'] / med[f'create_{loop}']:.3f}", "≤ 0.15")
        else:
            target("restore ÷ cold create", "not available yet", "≤ 0.15")
            break
    for loop in loops:
        if f"pool_cycle_{loop}" in med:
            target(f"pool acquire + call + release ÷ cold create + first call on {loop}",
                   f"{med[f'pool_cycle_{loop}'] / med[f'cold_{loop}']:.3f}", "≤ 0.15")
    return 0


if __name__ == "__main__":
    sys.exit(main())
