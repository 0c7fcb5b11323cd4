"""End to end: examples/web_app.py under a real uvicorn server on 127.0.0.1,
driven over HTTP with httpx."""

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
DEADLINE = 3.0  # the server's per-request deadline, seconds


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """The app under uvicorn in a subprocess, on a socket bound here to a
    free port of 127.0.0.1 and handed over with --fd."""
    log_path = tmp_path_factory.mktemp("web") / "server.log"
    env = {"AIONUB_POOL_SIZE": "3", "AIONUB_POOL_MAX_SIZE": "6", "AIONUB_DEADLINE": str(DEADLINE)}
    proc, url = webserver.start(
        lambda fd: [sys.executable, "-m", "uvicorn", "web_app:app", "--app-dir", str(EXAMPLES),
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
    # uvicorn shuts down cleanly (closing the pool), then re-raises SIGTERM.
    assert proc.returncode in (0, -signal.SIGTERM), log_path.read_text()
    assert "Traceback" not in log_path.read_text()


async def post(client: Any, function: str, body: Any = None, **kwargs: Any) -> tuple[int, Any, float]:
    """POST /call/{function}: status, JSON body, and when the answer came."""
    if body is not None and "content" not in kwargs:
        kwargs["json"] = body
    response = await client.post(f"/call/{function}", **kwargs)
    return response.status_code, response.json(), time.monotonic()


def run(server: str, *requests: tuple[Any, ...]) -> list[tuple[int, Any, float]]:
    """Send the requests concurrently; their results in order."""

    async def main() -> list[tuple[int, Any, float]]:
        async with httpx.AsyncClient(base_url=server, timeout=30) as client:
            return list(await asyncio.gather(*(post(client, *r) for r in requests)))

    return asyncio.run(main())


NORMAL = [
    (("add", {"args": [2, 3]}), 5),
    (("upper", {"args": ["hello"]}), "HELLO"),
    (("fib", {"args": [20]}), 6765),
    (("echo", {"args": [{"base64": "AAEC/w=="}]}), {"base64": "AAEC/w=="}),
    (("mul", {"args": [1.5, 4]}), 6.0),
    (("noop", None), None),
]


def test_functions_lists_signatures(server: str) -> None:
    functions = httpx.get(f"{server}/functions").json()
    assert functions["add"] == "add(int, int) -> int"
    assert functions["echo"] == "echo(bytes) -> bytes"


def test_concurrent_requests_succeed_while_one_times_out(server: str) -> None:
    started = time.monotonic()
    spin, *others = run(server, ("spin", {"timeout": 1.0}), *(r for r, _ in NORMAL * 2))
    status, body, spin_done = spin
    assert status == 504, body
    assert body["type"] == "CallTimeout" and "deadline of 1 s" in body["error"]
    assert spin_done - started < DEADLINE
    for (status, body, done), (_, expected) in zip(others, NORMAL * 2, strict=True):
        assert (status, body) == (200, {"result": expected})
        assert done < spin_done  # answered while the spinning call was still running


def test_the_server_deadline_applies_without_a_timeout(server: str) -> None:
    [(status, body, _)] = run(server, ("spin", {}))
    assert status == 504 and f"deadline of {DEADLINE:g} s" in body["error"]


def test_faulting_requests_do_not_affect_the_others(server: str) -> None:
    faults = [
        ("fault", {"args": ["read_null"]}),
        ("abort", {"args": [7, "boom"]}),
        ("overflow", {}),
        ("fault", {"args": ["ud"]}),
    ]
    results = run(server, *faults, *(r for r, _ in NORMAL))
    types = [body["type"] for status, body, _ in results[: len(faults)] if status == 500]
    assert types == ["GuestFault", "GuestAborted", "StackOverflow", "GuestFault"]
    assert results[1][1]["error"] == "guest aborted with code 7: boom"
    for (status, body, _), (_, expected) in zip(results[len(faults) :], NORMAL, strict=True):
        assert (status, body) == (200, {"result": expected})
    # Every sandbox went back to the pool restored: the guest's counter
    # starts from its snapshot on each request, and all sandboxes work.
    after = run(server, *[("counter", None)] * 8, *(r for r, _ in NORMAL))
    assert [(s, b) for s, b, _ in after[:8]] == [(200, {"result": 1})] * 8
    assert all(s == 200 for s, _, _ in after[8:])


@pytest.mark.parametrize(
    ("function", "kwargs", "kind", "message"),
    [
        ("nope", {"json": {"args": []}}, "GuestFunctionNotFound", "no function named 'nope'"),
        ("add", {"json": {"args": [1]}}, "TypeError", "add() takes 2 arguments (1 given)"),
        ("add", {"json": {"args": [1, "x"]}}, "TypeError", "add() argument 2 must be int, not str"),
        ("add", {"json": {"args": [2**70, 1]}}, "OverflowError", "does not fit"),
        ("echo", {"json": {"args": [{"base64": "!"}]}}, "BadRequest", "invalid base64"),
        ("echo", {"json": {"args": [[1, 2]]}}, "BadRequest", "arrays cannot be passed"),
        ("add", {"content": b"{not json"}, "BadRequest", "must be a JSON object"),
        ("add", {"json": {"args": 5}}, "BadRequest", '"args" must be a JSON array'),
        ("add", {"json": {"args": [], "timeout": -1}}, "BadRequest", '"timeout" must be a positive'),
    ],
)
def test_bad_input_gives_400(server: str, function: str, kwargs: dict[str, Any], kind: str, message: str) -> None:
    status, body, _ = asyncio.run(_post_once(server, function, kwargs))
    assert status == 400, body
    assert body["type"] == kind and message in body["error"]


async def _post_once(server: str, function: str, kwargs: dict[str, Any]) -> tuple[int, Any, float]:
    async with httpx.AsyncClient(base_url=server, timeout=30) as client:
        return await post(client, function, **kwargs)
