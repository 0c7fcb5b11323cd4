"""1,000 sandboxes calling concurrently from one event loop: does every one
make progress, and are calls fair across them?

Each sandbox gets one task that calls `fib(15)` in a loop for --duration
seconds (calls on one sandbox run one at a time; the sandboxes run in
parallel on the machine's cores). Prints aggregate calls/s, the spread of
calls per sandbox (min / median / max) and Jain's fairness index
(sum x)^2 / (n * sum x^2): 1.0 when every sandbox made the same number of
calls, 1/n when one made them all.

    python benchmarks/bench_scale.py [--sandboxes 1000] [--duration 5] [--uvloop] [--spawn]

With --spawn the sandboxes are spawned from one template's snapshot
(Sandbox.spawn), sharing its guest memory copy-on-write.
"""

from __future__ import annotations

import argparse
import asyncio
import resource
import statistics
import time
from typing import Any

import aionub


async def run(sandboxes: int, duration: float, spawn: bool = False) -> list[int]:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    options = {"memory_size": 4 * 1024 * 1024}
    async with aionub.Sandbox.create(aionub.DEMO_GUEST, **options) as sb:
        template = await sb.snapshot()

    def new() -> Any:
        return aionub.Sandbox.spawn(template) if spawn else aionub.Sandbox.create(aionub.DEMO_GUEST, **options)

    created: list[aionub.Sandbox] = []
    for start in range(0, sandboxes, 50):
        batch = min(50, sandboxes - start)
        created += await asyncio.gather(*(new() for _ in range(batch)))
    counts = [0] * sandboxes
    go = asyncio.Event()
    deadline = 0.0

    async def caller(i: int, sb: aionub.Sandbox) -> None:
        await go.wait()
        while time.monotonic() < deadline:
            assert await sb.call("fib", 15) == 610
            counts[i] += 1

    tasks = [asyncio.create_task(caller(i, sb)) for i, sb in enumerate(created)]
    deadline = time.monotonic() + duration
    go.set()
    await asyncio.gather(*tasks)
    for sb in created:
        await sb.aclose()
    return counts


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sandboxes", type=int, default=1000)
    parser.add_argument("--duration", type=float, default=5.0)
    parser.add_argument("--uvloop", action="store_true")
    parser.add_argument("--spawn", action="store_true", help="spawn the sandboxes from one template's snapshot")
    args = parser.parse_args()
    if args.uvloop:
        import uvloop

        counts = uvloop.run(run(args.sandboxes, args.duration, args.spawn))
    else:
        counts = asyncio.run(run(args.sandboxes, args.duration, args.spawn))
    total = sum(counts)
    jain = total * total / (len(counts) * sum(c * c for c in counts)) if total else 0.0
    how = "spawned from one snapshot" if args.spawn else "created"
    print(f"{args.sandboxes} sandboxes ({how}), {args.duration:g} s, {'uvloop' if args.uvloop else 'asyncio'}")
    print(f"  calls        {total} ({total / args.duration:,.0f}/s)")
    print(f"  per sandbox  min {min(counts)}  median {statistics.median(counts):g}  max {max(counts)}")
    print(f"  idle         {sum(1 for c in counts if c == 0)} sandboxes made no call")
    print()
    print(f"{args.sandboxes} concurrent sandboxes all calling: {sum(1 for c in counts if c > 0)} of {args.sandboxes} "
          f"({args.sandboxes} of {args.sandboxes})")
    print(f"fairness (Jain's index of calls per sandbox): {jain:.3f} (1.0 = perfectly fair)")


if __name__ == "__main__":
    main()
