"""1,000 idle sandboxes in one process: do they all come up, and what does
each cost in host memory beyond the guest pages it touched?

Accounting
----------
The process's resident set (VmRSS, /proc/self/status) is read before the
sandboxes exist and again with all of them alive, after a garbage
collection each time. The growth is split in two:

  guest pages   every page of every sandbox's guest memory that is resident,
                counted with mincore(2) over the sandbox's guest memory
                mapping (its address and size come from the C core). This is
                what the guest image, its buffers, heap and stack, and the
                host-built page tables / GDT / TSS in guest memory occupy:
                the part that grows with what the guest does.
  user side     everything else the process gained: the vCPU thread's stack
                and TLS, the kvm_run mapping, C allocations (sandbox struct,
                snapshot state), Python objects (Sandbox, binding, buffers),
                allocator slack. This is the target: per sandbox,
                (VmRSS growth - guest pages) / sandboxes <= 256 KiB.

Kernel memory (KVM's vCPU and VM structures, the nested hypervisor's page
tables, thread kernel stacks, eventfds) is not part of any RSS. Nor is the
kernel's per-VM `kvm-nx-lpage-recovery` worker, which shows up as a thread of
the process next to each `aionub-vcpu` thread. The script
prints the growth of the kernel's own counters (Slab, KernelStack,
PageTables, SecPageTables in /proc/meminfo) for information only: other
processes on a shared machine move them too.

With --spawn, every sandbox is spawned from one template's snapshot
(Sandbox.spawn): guest memory is the snapshot's image, shared copy-on-write,
so the pages a sandbox only reads are one page of the page cache for all of
them, which VmRSS would count once per sandbox that maps it. Then the
accounting uses proportional set sizes instead (Pss, /proc/self/smaps: a
page mapped N times counts 1/N in each mapping), which add up to the memory
actually used:

  written pages the private copies in each sandbox's guest memory mapping
                (its Anonymous pages): what the guest wrote since the snapshot
  shared image  the rest of those mappings' Pss: the snapshot's pages that
                sandboxes read, once for all of them
  user side     the growth of the process's Pss minus both; the target is
                per sandbox <= 64 KiB beyond the pages it wrote.

The measurement is taken twice: right after creation (idle, never called),
and after one `noop` call on every sandbox (idle after use). The target line
uses the second, the larger. RLIMIT_NOFILE is raised to its hard limit
(each sandbox holds a few file descriptors).

    python benchmarks/bench_idle.py                 # 1,000 sandboxes, about 5 s
    python benchmarks/bench_idle.py --quick         # 200 sandboxes
    python benchmarks/bench_idle.py --sandboxes 2000
    python benchmarks/bench_idle.py --spawn --sandboxes 5000
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import mmap
import os
import resource
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import guest_memory, require_kvm, resident_pages, target  # noqa: E402

import aionub  # noqa: E402

PAGE = mmap.PAGESIZE
KiB = 1024
KERNEL_FIELDS = ("Slab", "KernelStack", "PageTables", "SecPageTables", "Shmem")

def status_kib(field: str = "VmRSS") -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise RuntimeError(f"{field} not in /proc/self/status")


def meminfo_kib() -> dict[str, int]:
    out = {}
    with open("/proc/meminfo") as f:
        for line in f:
            name, _, rest = line.partition(":")
            if name in KERNEL_FIELDS:
                out[name] = int(rest.split()[0])
    return out


def thread_names() -> dict[str, int]:
    """Threads of this process by name (comm)."""
    counts: dict[str, int] = {}
    for tid in os.listdir("/proc/self/task"):
        try:
            with open(f"/proc/self/task/{tid}/comm") as f:
                name = f.read().strip()
        except OSError:
            continue
        counts[name] = counts.get(name, 0) + 1
    return counts


def smaps_by_start() -> dict[int, dict[str, int]]:
    """Pss and Anonymous (KiB) of every mapping of this process, by start address."""
    out: dict[int, dict[str, int]] = {}
    current: dict[str, int] = {}
    with open("/proc/self/smaps") as f:
        for line in f:
            head, _, rest = line.partition(" ")
            if head.endswith(":"):
                if head in ("Pss:", "Anonymous:"):
                    current[head[:-1]] = int(rest.split()[0])
            elif "-" in head:
                current = {}
                out[int(head.split("-")[0], 16)] = current
    return out


def pss_kib() -> int:
    with open("/proc/self/smaps_rollup") as f:
        for line in f:
            if line.startswith("Pss:"):
                return int(line.split()[1])
    raise RuntimeError("no Pss in /proc/self/smaps_rollup")


def snapshot_state(boxes: list[aionub.Sandbox], spawned: bool = False, image_kib: int = 0) -> dict[str, Any]:
    gc.collect()
    state: dict[str, Any] = {"rss": status_kib("VmRSS"), "threads": thread_names(), **meminfo_kib()}
    if not spawned:
        state["guest"] = sum(resident_pages(*guest_memory(sb)) for sb in boxes) * PAGE // KiB
        return state
    maps = smaps_by_start()
    written = shared = 0
    for sb in boxes:
        m = maps[guest_memory(sb)[0]]
        written += m.get("Anonymous", 0)
        shared += m.get("Pss", 0) - m.get("Anonymous", 0)
    state.update(pss=pss_kib(), guest=written, shared=shared, image=image_kib)
    return state


async def run(n: int, batch: int, spawn: bool) -> dict[str, dict[str, Any]]:
    boxes: list[aionub.Sandbox] = []
    # One sandbox first and closed again: loads the guest image, the native
    # module and the code paths, so that "before" already holds them.
    async with aionub.Sandbox.create(aionub.DEMO_GUEST) as sb:
        await sb.call("noop")
        template = await sb.snapshot()
    if spawn:
        async with aionub.Sandbox.spawn(template) as sb:  # creates the shared image
            await sb.call("noop")

    def new() -> Any:
        return aionub.Sandbox.spawn(template) if spawn else aionub.Sandbox.create(aionub.DEMO_GUEST)

    image = template.nbytes // KiB
    before = snapshot_state([], spawn, image)
    t0 = time.perf_counter()
    try:
        while len(boxes) < n:
            k = min(batch, n - len(boxes))
            boxes += await asyncio.gather(*(new() for _ in range(k)))
        created_s = time.perf_counter() - t0
        idle = snapshot_state(boxes, spawn, image)
        t0 = time.perf_counter()
        results = await asyncio.gather(*(sb.call("add", i, 1) for i, sb in enumerate(boxes)))
        called_s = time.perf_counter() - t0
        if results != [i + 1 for i in range(n)]:
            raise RuntimeError("a sandbox returned a wrong result")
        used = snapshot_state(boxes, spawn, image)
        alive = sum(1 for sb in boxes if not sb.closed and not sb.poisoned)
    finally:
        t0 = time.perf_counter()
        await asyncio.gather(*(sb.aclose() for sb in boxes), return_exceptions=True)
        closed_s = time.perf_counter() - t0
    return {"before": before, "idle": idle, "used": used,
            "info": {"created": len(boxes), "alive": alive, "created_s": created_s,
                     "called_s": called_s, "closed_s": closed_s}}


def describe(label: str, state: dict[str, Any], before: dict[str, Any], n: int) -> float:
    print(f"  {label}:")
    guest = state["guest"]
    if "pss" in state:
        grow = state["pss"] - before["pss"]
        shared = state["shared"]
        print(f"    Pss growth              {grow:>10,} KiB   ({grow / n:,.1f} KiB per sandbox;"
              f" VmRSS, counting shared pages per mapping: {state['rss'] - before['rss']:,} KiB)")
        print(f"    written guest pages     {guest:>10,} KiB   ({guest / n:,.1f} KiB per sandbox)")
        print(f"    shared snapshot image   {shared:>10,} KiB   (its pages' Pss in these mappings, rounded"
              f" down per mapping; the image holds {state['image']:,} KiB once for all)")
        guest += shared
    else:
        grow = state["rss"] - before["rss"]
        print(f"    VmRSS growth            {grow:>10,} KiB   ({grow / n:,.1f} KiB per sandbox)")
        print(f"    guest pages resident    {guest:>10,} KiB   ({guest / n:,.1f} KiB per sandbox)")
    user = (grow - guest) / n
    print(f"    user side               {grow - guest:>10,} KiB   ({user:,.1f} KiB per sandbox)")
    kernel = ", ".join(f"{f} {(state[f] - before[f]) / n:+,.1f}" for f in KERNEL_FIELDS if f in state)
    print(f"    kernel, per sandbox (KiB, machine-wide, information only): {kernel}")
    threads = state["threads"]
    print(f"    threads in the process: {sum(threads.values()):,} ("
          + ", ".join(f"{v:,} {k}" for k, v in sorted(threads.items(), key=lambda kv: -kv[1])) + ")")
    return user


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sandboxes", type=int, default=1000, help="sandboxes (default 1000)")
    parser.add_argument("--batch", type=int, default=50, help="sandboxes created concurrently (default 50)")
    parser.add_argument("--quick", action="store_true", help="200 sandboxes")
    parser.add_argument("--spawn", action="store_true", help="spawn them all from one template's snapshot")
    opts = parser.parse_args()
    if opts.quick:
        opts.sandboxes = 200
    if opts.sandboxes < 1 or opts.batch < 1:
        parser.error("--sandboxes and --batch must be >= 1")
    require_kvm()
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != resource.RLIM_INFINITY and (hard == resource.RLIM_INFINITY or soft < hard):
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))

    n = opts.sandboxes
    out = asyncio.run(run(n, opts.batch, opts.spawn))
    info = out["info"]
    made = "spawned" if opts.spawn else "created"
    print(f"{info['created']:,} of {n:,} sandboxes {made} in {info['created_s']:.1f} s"
          f" (batches of {opts.batch}); one call on each: {info['called_s'] * 1000:.0f} ms;"
          f" closing all: {info['closed_s']:.1f} s")
    describe("idle, never called", out["idle"], out["before"], n)
    user = describe("idle after one call each", out["used"], out["before"], n)
    print()
    all_up = info["created"] == n and info["alive"] == n
    if opts.spawn:
        target(f"{n:,} idle sandboxes spawned from one template in one process",
               f"{'all' if all_up else info['alive']} spawned and callable, user-side {user:,.0f} KiB per"
               f" sandbox beyond the guest pages it wrote", "all callable; ≤ 64 KiB")
    else:
        target(f"{n:,} idle sandboxes in one process",
               f"{'all' if all_up else info['alive']} created, user-side RSS {user:,.0f} KiB per sandbox"
               f" beyond touched guest pages", "all created; ≤ 256 KiB")
    return 0 if all_up else 1


if __name__ == "__main__":
    sys.exit(main())
