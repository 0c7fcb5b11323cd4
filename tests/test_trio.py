"""trio's own deadlines and cancel scopes (not through anyio) stop the
guest and wait for the vCPU to stop."""

from __future__ import annotations

import pytest
import trio

import aionub
from aionub import _native

pytestmark = pytest.mark.anyio


@pytest.fixture
def anyio_backend() -> str:
    return "trio"


async def test_trio_move_on_after_kills_the_guest() -> None:
    async with aionub.Sandbox.create(aionub.DEMO_GUEST) as sb:
        with trio.move_on_after(0.05) as scope:
            await sb.call("spin")
        assert scope.cancelled_caught
        assert not _native.lib.ab_interrupt_running(sb._ih)
        assert sb.poisoned


async def test_trio_fail_after_kills_the_guest() -> None:
    async with aionub.Sandbox.create(aionub.DEMO_GUEST) as sb:
        with pytest.raises(trio.TooSlowError):
            with trio.fail_after(0.05):
                await sb.call("spin")
        assert not _native.lib.ab_interrupt_running(sb._ih)
        assert sb.stats()["cancellations"] == 1


async def test_trio_nursery_cancel_kills_the_guest() -> None:
    async with aionub.Sandbox.create(aionub.DEMO_GUEST) as sb:
        snap = await sb.snapshot()
        async with trio.open_nursery() as nursery:
            nursery.start_soon(sb.call, "spin")
            await trio.sleep(0.05)
            nursery.cancel_scope.cancel()
        assert not _native.lib.ab_interrupt_running(sb._ih)
        await sb.restore(snap)
        assert await sb.call("add", 1, 2) == 3


async def test_trio_timeout_argument() -> None:
    async with aionub.Sandbox.create(aionub.DEMO_GUEST) as sb:
        with pytest.raises(aionub.CallTimeout):
            await sb.call("spin", timeout=0.02)
        assert sb.poisoned
