"""End to end: examples/script_rules.py (tenants' JavaScript pricing rules)
under a real uvicorn server on 127.0.0.1, driven over HTTP with httpx."""

from __future__ import annotations

import asyncio
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import webserver

httpx = pytest.importorskip("httpx")
pytest.importorskip("starlette")
pytest.importorskip("uvicorn")

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"
DEADLINE = 1.5  # the server's per-request deadline, seconds
CPU_BUDGET = 0.2  # the CPU time a rule may use per request, seconds

CART = """
const TAX = 0.2                       // top level: run once, before the pool's snapshot
function price(order) {
    let total = 0
    for (const {sku, qty} of order.items) {
        const item = host.lookup(sku)
        if (!item) throw new RangeError(`unknown sku ${sku}`)
        total += item.price * qty
    }
    return {total: Math.round(total * (1 + TAX) * 100) / 100, items: order.items.length}
}
"""

# Reports what an earlier request (or another tenant) left in a global, then
# leaves something there itself.
LEAKY = """
function price(order) {
    const seen = typeof globalThis.leak === 'undefined' ? null : globalThis.leak
    globalThis.leak = order.id
    if (order.spin) for (;;) {}
    return {seen}
}
"""


def serve(tmp_path_factory: pytest.TempPathFactory, cpu_budget: float) -> Iterator[str]:
    log_path = tmp_path_factory.mktemp("rules") / "server.log"
    env = {"AIONUB_POOL_SIZE": "1", "AIONUB_POOL_MAX_SIZE": "2", "AIONUB_DEADLINE": str(DEADLINE),
           "AIONUB_SETUP_DEADLINE": "2", "AIONUB_CPU_BUDGET": str(cpu_budget)}
    proc, url = webserver.start(
        lambda fd: [sys.executable, "-m", "uvicorn", "script_rules:app", "--app-dir", str(EXAMPLES),
                    "--fd", str(fd), "--log-level", "warning"],
        env, log_path,
    )
    try:
        yield url
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
    # uvicorn shuts down cleanly (closing every tenant's pool), then re-raises SIGTERM.
    assert proc.returncode in (0, -signal.SIGTERM), log_path.read_text()
    assert "Traceback" not in log_path.read_text()


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    yield from serve(tmp_path_factory, CPU_BUDGET)


@pytest.fixture(scope="module")
def server_without_cpu_budget(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """The same app with a CPU budget far beyond the deadline."""
    yield from serve(tmp_path_factory, 60.0)


def put_rule(server: str, tenant: str, source: str | bytes) -> tuple[int, Any]:
    response = httpx.put(f"{server}/tenants/{tenant}/rule", content=source, timeout=30)
    return response.status_code, response.json()


def price(server: str, tenant: str, order: Any = None, **kwargs: Any) -> tuple[int, Any]:
    if "content" not in kwargs and "json" not in kwargs:
        kwargs["json"] = order
    response = httpx.post(f"{server}/tenants/{tenant}/price", timeout=30, **kwargs)
    return response.status_code, response.json()


def test_upload_and_price(server: str) -> None:
    assert put_rule(server, "acme", CART) == (200, {"tenant": "acme", "bytes": len(CART), "replaced": False})
    assert httpx.get(f"{server}/tenants/acme/rule").text == CART
    order = {"items": [{"sku": "apple", "qty": 4}, {"sku": "melon", "qty": 1}]}
    assert price(server, "acme", order) == (200, {"result": {"total": 5.1, "items": 2}})
    # The same again: the pool hands out the restored sandbox.
    assert price(server, "acme", order) == (200, {"result": {"total": 5.1, "items": 2}})


def test_a_throwing_rule_gives_422_with_its_message(server: str) -> None:
    put_rule(server, "acme", CART)
    status, body = price(server, "acme", {"items": [{"sku": "kiwi", "qty": 1}]})
    assert status == 422 and body["type"] == "ScriptError"
    assert body["error"] == "RangeError: unknown sku kiwi"
    assert "price" in body["stack"]
    status, body = price(server, "acme", {"items": 5})  # the engine's own TypeError
    assert status == 422 and body["error"].startswith("TypeError"), body
    # A host function that raises: the script sees (and here does not catch) a HostError.
    status, body = price(server, "acme", {"items": [{"qty": 1}]})
    assert (status, body["error"]) == (422, "HostError: TypeError: a sku is a string, not NoneType")
    assert price(server, "acme", {"items": []}) == (200, {"result": {"total": 0, "items": 0}})


def test_an_endless_rule_uses_up_its_cpu_budget_and_the_next_request_is_served(server: str) -> None:
    assert put_rule(server, "loopy", LEAKY)[0] == 200
    started = time.monotonic()
    status, body = price(server, "loopy", {"id": 1, "spin": True})
    assert status == 429 and body["type"] == "CpuTimeout", body
    # Stopped after its CPU budget (plus a little), long before the deadline.
    assert CPU_BUDGET <= body["cpu_time"] < CPU_BUDGET + 0.5
    assert time.monotonic() - started < DEADLINE + 2
    # One sandbox (AIONUB_POOL_SIZE=1): the stopped one, restored.
    assert price(server, "loopy", {"id": 2}) == (200, {"result": {"seen": None}})


def test_an_endless_rule_gives_504_at_the_deadline(server_without_cpu_budget: str) -> None:
    server = server_without_cpu_budget
    assert put_rule(server, "loopy", LEAKY)[0] == 200
    started = time.monotonic()
    status, body = price(server, "loopy", {"id": 1, "spin": True})
    assert status == 504 and body["type"] == "CallTimeout", body
    assert DEADLINE - 0.1 < time.monotonic() - started < DEADLINE + 2
    assert price(server, "loopy", {"id": 2}) == (200, {"result": {"seen": None}})


def test_tenants_and_requests_are_isolated(server: str) -> None:
    assert put_rule(server, "t1", LEAKY)[0] == 200
    assert put_rule(server, "t2", LEAKY)[0] == 200

    async def main() -> list[tuple[int, Any]]:
        async with httpx.AsyncClient(base_url=server, timeout=30) as client:
            async def one(tenant: str, i: int) -> tuple[int, Any]:
                r = await client.post(f"/tenants/{tenant}/price", json={"id": f"{tenant}-{i}"})
                return r.status_code, r.json()

            return list(await asyncio.gather(*(one(t, i) for i in range(4) for t in ("t1", "t2"))))

    # Each request sets a global; no later request, of the same tenant or
    # the other, sees it (every checkout starts from the pool's snapshot).
    for status, body in asyncio.run(main()):
        assert (status, body) == (200, {"result": {"seen": None}})


def test_a_new_rule_replaces_the_old_one(server: str) -> None:
    put_rule(server, "swap", "function price(o) { return 'v1' }")
    assert price(server, "swap", {}) == (200, {"result": "v1"})
    assert put_rule(server, "swap", "function price(o) { return 'v2' }")[1]["replaced"] is True
    assert price(server, "swap", {}) == (200, {"result": "v2"})
    # A rule that does not load leaves the previous one in force.
    for bad, message in [
        ("function price(o) {", "the rule failed to load: SyntaxError"),
        ("throw new Error('nope')", "the rule failed to load: Error: nope"),
        ("function cost(o) { return 1 }", "the rule must define function price(order)"),
        ("for (;;) {}", "the rule's top level ran past 2 s"),
    ]:
        status, body = put_rule(server, "swap", bad)
        assert status == 422 and message in body["error"], (bad, body)
    assert price(server, "swap", {}) == (200, {"result": "v2"})


@pytest.mark.parametrize(
    ("tenant", "kwargs", "status", "kind"),
    [
        ("nobody", {"json": {}}, 404, "NoRule"),
        ("acme", {"content": b"{not json"}, 400, "BadRequest"),
        ("acme", {"json": [1, 2]}, 400, "BadRequest"),
        ("acme", {"json": {"items": [], "big": 2**70}}, 400, "OverflowError"),
        ("bad.name", {"json": {}}, 400, "BadRequest"),
    ],
)
def test_bad_requests(server: str, tenant: str, kwargs: dict[str, Any], status: int, kind: str) -> None:
    put_rule(server, "acme", CART)
    got, body = price(server, tenant, **kwargs)
    assert (got, body["type"]) == (status, kind), body


def test_rule_size_limit(server: str) -> None:
    status, body = put_rule(server, "big", "// " + "x" * 70_000)
    assert status == 413 and body["type"] == "RuleTooLarge"
