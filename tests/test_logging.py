"""Logging: guest records on "aionub.guest" with the sandbox id, lifecycle
events on "aionub" at DEBUG."""

from __future__ import annotations

import asyncio
import logging

import pytest

import aionub


def test_guest_records_carry_the_sandbox_id(caplog: pytest.LogCaptureFixture) -> None:
    async def main() -> int:
        async with aionub.Sandbox.create(aionub.DEMO_GUEST) as sb:
            await sb.call("log", "hello")
            return sb.id

    with caplog.at_level(logging.INFO, logger="aionub.guest"):
        sandbox_id = asyncio.run(main())
    [record] = [r for r in caplog.records if r.name == "aionub.guest"]
    assert record.levelno == logging.INFO
    assert record.sandbox_id == sandbox_id  # type: ignore[attr-defined]
    assert record.getMessage() == f"[sandbox {sandbox_id}] hello"


def test_lifecycle_at_debug(caplog: pytest.LogCaptureFixture) -> None:
    async def main() -> None:
        async with aionub.Sandbox.create(aionub.DEMO_GUEST) as sb:
            snap = await sb.snapshot()
            with pytest.raises(aionub.GuestFault):
                await sb.call("fault", "ud")
            await sb.restore(snap)

    with caplog.at_level(logging.DEBUG, logger="aionub"):
        asyncio.run(main())
    messages = [r.getMessage() for r in caplog.records if r.name == "aionub" and r.levelno == logging.DEBUG]
    expected = ["created", "snapshot of", "poisoned: fault() did not run to completion (GuestFault", "restored"]
    expected.append("closed")
    found = iter(messages)
    for fragment in expected:  # in this order
        assert any(fragment in m for m in found), (fragment, messages)
