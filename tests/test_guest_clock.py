"""The guest's clocks: read from its TSC between anchors (docs/abi.md,
"System calls"), agreeing with the host's clocks and never going back."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

import aionub

HERE = Path(__file__).resolve().parent
# Pairing the TSC with the host's clocks happens inside one host-side read
# (an ioctl between two clock readings); allow for that and for rounding.
SLACK_NS = 200_000

pytestmark = pytest.mark.anyio


@pytest.fixture(scope="module")
def clock_guest(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return aionub.build_guest(HERE / "libc" / "clock.c", tmp_path_factory.mktemp("clock") / "clock.elf")


async def test_monotonic_and_realtime_agree_with_the_host(clock_guest: Path) -> None:
    async with aionub.Sandbox.create(clock_guest) as sb:
        for _ in range(20):
            before = time.monotonic_ns()
            guest = await sb.call("mono")
            after = time.monotonic_ns()
            assert before - SLACK_NS <= guest <= after + SLACK_NS
            before = time.time_ns()
            guest = await sb.call("real")
            after = time.time_ns()
            assert before - SLACK_NS <= guest <= after + SLACK_NS


async def test_reads_between_anchors_cost_no_exit_and_never_go_back(clock_guest: Path) -> None:
    async with aionub.Sandbox.create(clock_guest) as sb:
        exits = sb.stats()["runs"]
        before = time.monotonic_ns()
        reads = await sb.call("read_for", 5_000_000)  # 5 ms of reads, across anchors
        elapsed = time.monotonic_ns() - before
        assert reads > 0, "a monotonic read went back"
        runs = sb.stats()["runs"] - exits
        # One anchor per millisecond of TSC time at most (plus the call's own
        # run), however many reads there were.
        assert reads > 1000
        assert runs <= 2 + elapsed // 1_000_000 + 1, (runs, reads)
        assert elapsed >= 5_000_000 - SLACK_NS  # the guest's 5 ms were the host's


async def test_a_restored_sandbox_reads_current_time(clock_guest: Path) -> None:
    async with aionub.Sandbox.create(clock_guest) as a, aionub.Sandbox.create(clock_guest) as b:
        await a.call("mono")
        snap = await a.snapshot()
        await b.restore(snap)  # another VM: another TSC
        before = time.monotonic_ns()
        guest = await b.call("mono")
        after = time.monotonic_ns()
        assert before - 1_000_000 - SLACK_NS <= guest <= after + 1_000_000 + SLACK_NS
        await a.restore(snap)
        before = time.monotonic_ns()
        guest = await a.call("mono")
        assert before - SLACK_NS <= guest <= time.monotonic_ns() + SLACK_NS


async def test_cpu_time_is_the_vcpu_threads(clock_guest: Path) -> None:
    async with aionub.Sandbox.create(clock_guest) as sb:
        start = await sb.call("cpu")
        await sb.call("read_for", 20_000_000)
        spent = await sb.call("cpu") - start
        # 20 ms of busy reading is 20 ms of the vCPU thread's CPU time, less
        # whatever the scheduler took away on a shared machine.
        assert 2_000_000 <= spent <= 200_000_000
