"""Shared fixtures. Every async test runs on asyncio, asyncio+uvloop and
trio (anyio's pytest plugin). Tests that need /dev/kvm skip, saying so,
only where it is missing."""

from __future__ import annotations

import os
from collections.abc import AsyncIterator

import pytest

import aionub

KVM_DEVICE = "/dev/kvm"
kvm_missing = not os.path.exists(KVM_DEVICE)


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if not kvm_missing:
        return
    skip = pytest.mark.skip(reason=f"{KVM_DEVICE} is missing on this machine: KVM tests cannot run")
    for item in items:
        if "kvm" in item.keywords:
            item.add_marker(skip)


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "kvm: needs /dev/kvm")
    config.addinivalue_line("markers", "no_kvm: runs without /dev/kvm")


@pytest.fixture(
    params=[
        pytest.param(("asyncio", {}), id="asyncio"),
        pytest.param(("asyncio", {"use_uvloop": True}), id="uvloop"),
        pytest.param(("trio", {}), id="trio"),
    ]
)
def anyio_backend(request: pytest.FixtureRequest) -> tuple[str, dict[str, object]]:
    return request.param  # type: ignore[no-any-return]


@pytest.fixture
async def demo() -> AsyncIterator[aionub.Sandbox]:
    async with aionub.Sandbox.create(aionub.DEMO_GUEST) as sb:
        yield sb


def pytest_itemcollected(item: pytest.Item) -> None:
    # Everything under tests/ that touches a sandbox needs KVM.
    if "no_kvm" not in item.keywords:
        item.add_marker(pytest.mark.kvm)
