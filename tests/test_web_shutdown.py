"""Graceful shutdown of examples/web_app.py under a real uvicorn, with
requests in flight: the server finishes (or, past uvicorn's graceful
timeout, cancels) them, closes the pool and exits, leaving no vCPU thread
and no eventfd behind."""

from __future__ import annotations

import asyncio
import json
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import webserver

httpx = pytest.importorskip("httpx")
pytest.importorskip("starlette")
pytest.importorskip("uvicorn")

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"

# Runs uvicorn in-process, then reports what the process still holds once
# the server has shut down (the pool closed in the app's lifespan).
RUNNER = """
import contextlib, json, os, socket, sys, time
import uvicorn
sys.path.insert(0, sys.argv[1])
import web_app

def eventfds():
    count = 0
    for fd in os.listdir("/proc/self/fd"):
        try:
            count += "eventfd" in os.readlink(f"/proc/self/fd/{fd}")
        except FileNotFoundError:
            pass
    return count

def left():
    deadline = time.monotonic() + 2  # a joined thread leaves /proc a moment later
    while True:
        threads = sum(open(f"/proc/self/task/{t}/comm").read().strip() == "aionub-vcpu"
                      for t in os.listdir("/proc/self/task"))
        if threads == 0 or time.monotonic() > deadline:
            break
    return {"vcpu_threads": threads, "eventfds": eventfds() - baseline}

app = web_app.app
inner = app.router.lifespan_context

@contextlib.asynccontextmanager
async def lifespan(a):
    global baseline
    baseline = eventfds()  # the event loop's own (libuv has one)
    async with inner(a):
        yield
    print("LEFT " + json.dumps(left()), flush=True)  # after the pool was closed

app.router.lifespan_context = lifespan
sock = socket.socket(fileno=int(sys.argv[2]))
config = uvicorn.Config(app, log_level="warning", timeout_graceful_shutdown=float(sys.argv[3]) or None)
uvicorn.Server(config).run(sockets=[sock])
"""


def start_server(tmp_path: Path, graceful: float) -> tuple[subprocess.Popen[bytes], str, Path]:
    log_path = tmp_path / "server.log"
    env = {"AIONUB_POOL_SIZE": "2", "AIONUB_POOL_MAX_SIZE": "4", "AIONUB_DEADLINE": "3"}
    proc, url = webserver.start(
        lambda fd: [sys.executable, "-c", RUNNER, str(EXAMPLES), str(fd), str(graceful)], env, log_path
    )
    return proc, url, log_path


async def requests_in_flight(url: str, proc: subprocess.Popen[bytes]) -> list[Any]:
    """Spinning and normal requests; SIGTERM once they are in flight."""

    async def post(client: Any, function: str, args: list[Any], timeout: float | None = None) -> Any:
        body: dict[str, Any] = {"args": args}
        if timeout is not None:
            body["timeout"] = timeout
        try:
            response = await client.post(f"/call/{function}", json=body)
            return response.status_code
        except httpx.TransportError as exc:
            return type(exc).__name__

    async with httpx.AsyncClient(base_url=url, timeout=30) as client:
        tasks = [asyncio.create_task(post(client, "spin", [], 2.0)) for _ in range(3)]
        tasks += [asyncio.create_task(post(client, "fib", [24])) for _ in range(3)]
        await asyncio.sleep(0.5)  # in flight: the spins run for 2 s
        proc.send_signal(signal.SIGTERM)
        return list(await asyncio.gather(*tasks))


@pytest.mark.parametrize(
    ("graceful", "expected"),
    [
        # No graceful timeout: the requests finish (504 for the spins).
        (0.0, {504, 200}),
        # A graceful timeout shorter than the spins: uvicorn cancels the
        # requests still running (their calls stop the guest, the pool's
        # check-in is cancelled); clients see the connection end.
        (0.2, None),
    ],
)
def test_graceful_shutdown_with_requests_in_flight(tmp_path: Path, graceful: float, expected: set[int] | None) -> None:
    proc, url, log_path = start_server(tmp_path, graceful)
    try:
        statuses = asyncio.run(requests_in_flight(url, proc))
        proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
            pytest.fail(f"the server did not shut down:\n{log_path.read_text()}")
    text = log_path.read_text()
    # uvicorn shuts down cleanly, then re-raises SIGTERM.
    assert proc.returncode in (0, -signal.SIGTERM), text
    assert "unclosed" not in text, text
    if graceful == 0:
        assert "Traceback" not in text, text
    left = json.loads(text.split("LEFT ", 1)[1].splitlines()[0])
    assert left == {"vcpu_threads": 0, "eventfds": 0}, text
    assert len(statuses) == 6
    if expected is not None:
        assert set(statuses) == expected, statuses
        assert statuses[:3] == [504] * 3
