"""SandboxPool: reset between uses, poisoning inside a checkout, waiting,
growth, timeouts and closing."""

from __future__ import annotations

import anyio
import pytest
from procinfo import settled_vcpu_threads, vcpu_threads

import aionub

pytestmark = pytest.mark.anyio

SMALL = {"memory_size": 4 * 1024 * 1024}


async def test_state_from_one_user_is_never_visible_to_the_next() -> None:
    async with aionub.SandboxPool(aionub.DEMO_GUEST, size=2, **SMALL) as pool:
        assert pool.size == 2 and pool.idle == 2
        for _ in range(10):
            async with pool.acquire() as sb:
                assert await sb.call("counter") == 1
                assert await sb.call("counter") == 2
                await sb.call("alloc", 100_000)
        assert pool.size == 2


async def test_a_poisoned_sandbox_comes_back_healthy() -> None:
    async with aionub.SandboxPool(aionub.DEMO_GUEST, size=1, **SMALL) as pool:
        async with pool.acquire() as sb:
            with pytest.raises(aionub.GuestFault):
                await sb.call("fault", "div0")
            assert sb.poisoned
        async with pool.acquire() as sb2:
            assert sb2 is sb
            assert not sb2.poisoned
            assert await sb2.call("counter") == 1
        async with pool.acquire() as sb:
            with pytest.raises(aionub.CallTimeout):
                await sb.call("spin", timeout=0.01)
        async with pool.acquire() as sb:
            assert await sb.call("add", 1, 2) == 3


async def test_errors_inside_a_checkout_still_return_the_sandbox() -> None:
    async with aionub.SandboxPool(aionub.DEMO_GUEST, size=1, **SMALL) as pool:
        with pytest.raises(RuntimeError, match="user code"):
            async with pool.acquire() as sb:
                await sb.call("counter")
                raise RuntimeError("user code failed")
        async with pool.acquire() as sb:
            assert await sb.call("counter") == 1


async def test_waits_when_all_are_busy_first_come_first_served() -> None:
    async with aionub.SandboxPool(aionub.DEMO_GUEST, size=1, **SMALL) as pool:
        order: list[str] = []
        release = anyio.Event()

        async def holder() -> None:
            async with pool.acquire():
                order.append("holder")
                await release.wait()

        async def waiter(name: str) -> None:
            async with pool.acquire() as sb:
                order.append(name)
                assert await sb.call("counter") == 1

        async with anyio.create_task_group() as tg:
            tg.start_soon(holder)
            await anyio.sleep(0.02)
            tg.start_soon(waiter, "first")
            await anyio.sleep(0.02)
            tg.start_soon(waiter, "second")
            await anyio.sleep(0.02)
            assert order == ["holder"]
            release.set()
        assert order == ["holder", "first", "second"]


async def test_acquire_timeout() -> None:
    async with aionub.SandboxPool(aionub.DEMO_GUEST, size=1, acquire_timeout=0.05, **SMALL) as pool:
        async with pool.acquire():
            with pytest.raises(aionub.PoolTimeout, match=r"within 0\.05 s") as info:
                async with pool.acquire():
                    pass
            assert isinstance(info.value, TimeoutError)
        async with pool.acquire() as sb:  # free again
            assert await sb.call("noop") is None


async def test_grows_up_to_max_size() -> None:
    async with aionub.SandboxPool(aionub.DEMO_GUEST, size=1, max_size=3, acquire_timeout=0.05, **SMALL) as pool:
        async with pool.acquire() as a, pool.acquire() as b, pool.acquire() as c:
            assert len({a.id, b.id, c.id}) == 3
            assert pool.size == 3
            with pytest.raises(aionub.PoolTimeout):
                async with pool.acquire():
                    pass
        assert pool.idle == 3


async def test_close_leaves_nothing_and_fails_waiters() -> None:
    before = vcpu_threads()
    pool = aionub.SandboxPool(aionub.DEMO_GUEST, size=2, **SMALL)
    await pool.start()
    assert vcpu_threads() == before + 2
    outcome: list[BaseException] = []

    async def busy() -> None:
        try:
            async with pool.acquire() as sb:
                await sb.call("spin")
        except aionub.SandboxError as exc:
            outcome.append(exc)

    async with anyio.create_task_group() as tg:
        tg.start_soon(busy)
        await anyio.sleep(0.05)
        await pool.aclose()
    assert len(outcome) == 1 and isinstance(outcome[0], aionub.SandboxClosed)
    assert settled_vcpu_threads(before) == before
    with pytest.raises(aionub.SandboxClosed):
        async with pool.acquire():
            pass


async def test_bad_pool_arguments() -> None:
    with pytest.raises(ValueError, match="size"):
        aionub.SandboxPool(aionub.DEMO_GUEST, size=0)
    with pytest.raises(ValueError, match="max_size"):
        aionub.SandboxPool(aionub.DEMO_GUEST, size=3, max_size=2)
    with pytest.raises(ValueError, match="acquire_timeout"):
        aionub.SandboxPool(aionub.DEMO_GUEST, acquire_timeout=-1)
    with pytest.raises(TypeError, match="unknown sandbox option"):
        aionub.SandboxPool(aionub.DEMO_GUEST, bogus=1)
    pool = aionub.SandboxPool(aionub.DEMO_GUEST)
    with pytest.raises(RuntimeError, match="start the pool first"):
        async with pool.acquire():
            pass


async def test_a_failing_start_raises_the_failure_itself_not_a_group() -> None:
    # The first sandboxes are created concurrently (a task group); what the
    # caller sees is the failure, as for one Sandbox.create.
    async def setup(sb: aionub.Sandbox) -> None:
        raise LookupError("setup failed")

    pool = aionub.SandboxPool(aionub.DEMO_GUEST, size=3, setup=setup)
    with pytest.raises(LookupError, match="setup failed"):
        await pool.start()
    assert pool.size == 0
