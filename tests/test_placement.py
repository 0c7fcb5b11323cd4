"""placement="colocate": while no other call is in flight, the thread that
submits calls and the vCPU thread are pinned to one CPU; other calls in
flight unpin both, a long call unpins the vCPU thread, and closing the
sandbox gives the submitting thread its affinity back."""

from __future__ import annotations

import os

import anyio
import pytest
from procinfo import vcpu_thread_ids as vcpu_tids

import aionub

pytestmark = pytest.mark.anyio


async def new_sandbox(**config: object) -> tuple[aionub.Sandbox, int]:
    before = vcpu_tids()
    sb = await aionub.Sandbox.create(aionub.DEMO_GUEST, **config)  # type: ignore[arg-type]
    (tid,) = vcpu_tids() - before
    return sb, tid


needs_two_cpus = pytest.mark.skipif(
    len(os.sched_getaffinity(0)) < 2, reason="placement needs at least two CPUs to be observable"
)


@needs_two_cpus
async def test_colocate_pins_both_threads_and_spreads_a_long_call() -> None:
    allowed = os.sched_getaffinity(0)
    sb, tid = await new_sandbox(placement="colocate", spread_after=0.002)
    try:
        async with sb:
            assert await sb.call("add", 1, 2) == 3
            loop_cpus = os.sched_getaffinity(0)
            assert len(loop_cpus) == 1  # the submitting thread stays where it was
            assert os.sched_getaffinity(tid) == loop_cpus
            assert sb.stats()["pins"] == 1
            # A call far longer than spread_after: the vCPU thread is unpinned while it runs.
            with pytest.raises(aionub.CallTimeout):
                await sb.call("spin", timeout=0.1)
            assert sb.stats()["spreads"] == 1
            assert os.sched_getaffinity(tid) == allowed
            assert sb.stats()["stale_kicks"] == 0  # the spread timer's signal is not a stale kick
        # Closed: the submitting thread has its affinity back.
        assert os.sched_getaffinity(0) == allowed
    finally:
        os.sched_setaffinity(0, allowed)


@needs_two_cpus
async def test_other_calls_in_flight_unpin_both_threads() -> None:
    allowed = os.sched_getaffinity(0)
    a, tid_a = await new_sandbox(placement="colocate")
    b, _ = await new_sandbox(placement="colocate")
    try:
        async with a, b:
            assert await a.call("noop") is None
            assert len(os.sched_getaffinity(tid_a)) == 1  # pinned: nothing else was in flight

            async def busy() -> None:  # in flight while a's next call is submitted
                with pytest.raises(aionub.CallTimeout):
                    await b.call("spin", timeout=0.3)

            async with anyio.create_task_group() as tg:
                tg.start_soon(busy)
                await anyio.sleep(0.05)
                assert await a.call("noop") is None
                assert os.sched_getaffinity(0) == allowed  # the loop's thread too
            assert a.stats()["unpins"] == 1
            assert os.sched_getaffinity(tid_a) == allowed
    finally:
        os.sched_setaffinity(0, allowed)


async def test_the_scheduler_placement_never_pins(demo: aionub.Sandbox) -> None:
    before = os.sched_getaffinity(0)
    for _ in range(5):
        await demo.call("noop")
    stats = demo.stats()
    assert stats["pins"] == stats["unpins"] == stats["spreads"] == 0
    assert os.sched_getaffinity(0) == before


@pytest.mark.parametrize(
    ("config", "message"),
    [
        ({"placement": "nearby"}, "placement must be one of 'scheduler', 'colocate', got 'nearby'"),
        ({"spread_after": 0}, r"spread_after must be in \(0, 1.0\] seconds"),
        ({"spread_after": "1"}, "spread_after must be a number of seconds"),
    ],
)
async def test_bad_placement_options_are_refused(config: dict[str, object], message: str) -> None:
    with pytest.raises((ValueError, TypeError), match=message):
        await aionub.Sandbox.create(aionub.DEMO_GUEST, **config)  # type: ignore[arg-type]
