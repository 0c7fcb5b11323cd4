#!/usr/bin/env python3
"""Create and close sandboxes 10,000 times (by default) and check that the
process keeps no vCPU threads, file descriptors, memory mappings or memory.

    python scripts/soak_create_close.py                 # 10,000 cycles, asyncio
    python scripts/soak_create_close.py --cycles 2000 --backend trio

Cycles rotate through the ways a sandbox ends: closed right away, after a
call, after a CPU fault, after a timeout, closed with a call in flight,
after snapshot/restore, after a stack overflow, and failed creation. The
process is measured after a warm-up (lazily created process-wide state such
as the /dev/kvm descriptor, the C library's thread-stack cache and malloc
arenas is not a leak) and every --every cycles. Exit status 1 if the end
state differs from the warmed-up one beyond small tolerances."""

from __future__ import annotations

import argparse
import gc
import os
import sys
import time

import anyio

import aionub

MiB = 1 << 20


def measure() -> dict[str, int]:
    gc.collect()
    vcpus = 0
    tasks = os.listdir("/proc/self/task")
    for tid in tasks:
        try:
            with open(f"/proc/self/task/{tid}/comm") as f:
                vcpus += f.read().strip() == "aionub-vcpu"
        except FileNotFoundError:
            pass
    status = {}
    with open("/proc/self/status") as f:
        for line in f:
            key, _, value = line.partition(":")
            if key in ("VmSize", "VmRSS"):
                status[key] = int(value.split()[0]) * 1024
    with open("/proc/self/maps") as f:
        maps = sum(1 for _ in f)
    return {
        "vcpu_threads": vcpus,
        "threads": len(tasks),
        "fds": len(os.listdir("/proc/self/fd")),
        "mappings": maps,
        "vm_size": status["VmSize"],
        "rss": status["VmRSS"],
    }


def show(cycle: int, elapsed: float, m: dict[str, int]) -> None:
    print(
        f"{cycle:>7,} cycles {elapsed:7.1f} s  vcpu threads {m['vcpu_threads']}  threads {m['threads']}  "
        f"fds {m['fds']}  mappings {m['mappings']}  VmSize {m['vm_size'] / MiB:7.1f} MiB  "
        f"RSS {m['rss'] / MiB:6.1f} MiB",
        flush=True,
    )


async def cycle(i: int) -> None:
    kind = i % 8
    if kind == 7:
        try:
            await aionub.Sandbox.create(b"\x7fELF" + bytes(60))
        except aionub.InvalidGuest:
            return
        raise AssertionError("a broken image was accepted")
    sb = await aionub.Sandbox.create(aionub.DEMO_GUEST, memory_size=4 * MiB)
    try:
        if kind == 1:
            assert await sb.call("add", i, 1) == i + 1
        elif kind == 2:
            try:
                await sb.call("fault", "read_null")
            except aionub.GuestFault:
                pass
        elif kind == 3:
            try:
                await sb.call("spin", timeout=0.001)
            except aionub.CallTimeout:
                pass
        elif kind == 4:
            async with anyio.create_task_group() as tg:

                async def spin() -> None:
                    try:
                        await sb.call("spin")
                    except aionub.SandboxClosed:
                        pass

                tg.start_soon(spin)
                await anyio.sleep(0.001)
                await sb.aclose()
        elif kind == 5:
            snap = await sb.snapshot()
            assert await sb.call("alloc", 100_000) == 100_000
            await sb.restore(snap)
            del snap
        elif kind == 6:
            try:
                await sb.call("overflow")
            except aionub.StackOverflow:
                pass
    finally:
        await sb.aclose()


async def soak(cycles: int, every: int, warmup: int) -> int:
    for i in range(warmup):
        await cycle(i)
    base = measure()
    started = time.monotonic()
    show(0, 0.0, base)
    peak = dict(base)
    for i in range(1, cycles + 1):
        await cycle(i)
        if i % every == 0 or i == cycles:
            m = measure()
            for key in peak:
                peak[key] = max(peak[key], m[key])
            show(i, time.monotonic() - started, m)
    end = measure()
    elapsed = time.monotonic() - started
    print(f"{cycles:,} create/close cycles in {elapsed:.1f} s ({elapsed / cycles * 1e3:.2f} ms per cycle)")
    print("change from the warmed-up state: " + ", ".join(
        f"{k} {end[k] - base[k]:+,}" if k not in ("vm_size", "rss") else f"{k} {(end[k] - base[k]) / MiB:+.1f} MiB"
        for k in base
    ))
    problems = []
    if end["vcpu_threads"]:
        problems.append(f"{end['vcpu_threads']} vCPU threads left")
    for key, tolerance in (("threads", 0), ("fds", 0), ("mappings", 4)):
        if end[key] > base[key] + tolerance:
            problems.append(f"{key}: {base[key]} -> {end[key]}")
    if end["vm_size"] > base["vm_size"] + 16 * MiB:
        problems.append(f"VmSize grew by {(end['vm_size'] - base['vm_size']) / MiB:.1f} MiB")
    if end["rss"] > base["rss"] + 32 * MiB:
        problems.append(f"RSS grew by {(end['rss'] - base['rss']) / MiB:.1f} MiB")
    if problems:
        print("LEAKS: " + "; ".join(problems))
        return 1
    print("no leaks")
    return 0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--cycles", type=int, default=10_000)
    parser.add_argument("--every", type=int, default=1_000, help="measure every N cycles")
    parser.add_argument("--warmup", type=int, default=200)
    parser.add_argument("--backend", default="asyncio", choices=("asyncio", "uvloop", "trio"))
    args = parser.parse_args()
    backend, options = ("asyncio", {"use_uvloop": True}) if args.backend == "uvloop" else (args.backend, {})
    return anyio.run(soak, args.cycles, args.every, args.warmup, backend=backend, backend_options=options)


if __name__ == "__main__":
    sys.exit(main())
