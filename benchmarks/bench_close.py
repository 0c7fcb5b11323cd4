"""Does closing sandboxes block the event loop?

Creates --sandboxes sandboxes, then closes them all concurrently while a
ticker task yields to the loop in a tight loop, and prints how long the
closes took, how often the ticker ran meanwhile and the longest gap between
two ticks (how long the loop was kept from running anything else).

    python benchmarks/bench_close.py [--sandboxes 200]
"""

from __future__ import annotations

import argparse
import asyncio
import time

import aionub


async def run(sandboxes: int) -> None:
    created = [await aionub.Sandbox.create(aionub.DEMO_GUEST) for _ in range(sandboxes)]
    gaps: list[float] = []
    stop = False

    async def ticker() -> None:
        last = time.perf_counter()
        while not stop:
            await asyncio.sleep(0)
            now = time.perf_counter()
            gaps.append(now - last)
            last = now

    task = asyncio.create_task(ticker())
    start = time.perf_counter()
    await asyncio.gather(*(sb.aclose() for sb in created))
    elapsed = time.perf_counter() - start
    stop = True
    await task
    gaps.sort()
    print(f"closed {sandboxes} sandboxes concurrently in {elapsed * 1e3:.0f} ms")
    print(f"  the loop ran other tasks {len(gaps)} times meanwhile; "
          f"gap p50 {gaps[len(gaps) // 2] * 1e6:.0f} µs, max {gaps[-1] * 1e3:.1f} ms")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sandboxes", type=int, default=200)
    args = parser.parse_args()
    asyncio.run(run(args.sandboxes))


if __name__ == "__main__":
    main()
