"""examples/web_app.py with two worker processes on 127.0.0.1, under
uvicorn --workers and under gunicorn with uvicorn workers: each worker has
its own pool, both serve requests, and the server shuts down cleanly."""

from __future__ import annotations

import asyncio
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest
import webserver

httpx = pytest.importorskip("httpx")
pytest.importorskip("starlette")
pytest.importorskip("uvicorn")

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"
WORKERS = 2


async def _drive(url: str) -> tuple[set[str], int]:
    """Concurrent calls on fresh connections (so that the kernel spreads
    them over the workers) until both workers answered: at most 400 calls,
    60 s. Returns the pids seen and the number of calls."""
    pids: set[str] = set()
    calls = 0
    deadline = time.monotonic() + 60
    limits = httpx.Limits(max_keepalive_connections=0)
    async with httpx.AsyncClient(base_url=url, timeout=30, limits=limits) as client:
        while len(pids) < WORKERS and calls < 400 and time.monotonic() < deadline:
            responses = await asyncio.gather(
                *(client.post("/call/add", json={"args": [i, 1]}) for i in range(20))
            )
            for i, response in enumerate(responses):
                assert response.status_code == 200, response.text
                assert response.json() == {"result": i + 1}
                pids.add(response.headers["x-aionub-worker"])
            calls += len(responses)
    return pids, calls


def _uvicorn(fd: int) -> list[str]:
    return [sys.executable, "-m", "uvicorn", "web_app:app", "--app-dir", str(EXAMPLES),
            "--fd", str(fd), "--workers", str(WORKERS), "--log-level", "warning"]


def _gunicorn(fd: int) -> list[str]:
    pytest.importorskip("gunicorn")
    return [sys.executable, "-m", "gunicorn", "-k", "uvicorn.workers.UvicornWorker", "-w", str(WORKERS),
            "--chdir", str(EXAMPLES), "--bind", f"fd://{fd}", "--log-level", "warning", "web_app:app"]


@pytest.mark.parametrize("server", [_uvicorn, _gunicorn], ids=["uvicorn", "gunicorn"])
def test_two_workers_each_with_its_own_pool(tmp_path: Path, server: Callable[[int], list[str]]) -> None:
    log_path = tmp_path / "server.log"
    env = {"AIONUB_POOL_SIZE": "2", "AIONUB_POOL_MAX_SIZE": "4", "AIONUB_DEADLINE": "10"}
    proc, url = webserver.start(server, env, log_path)
    try:
        pids, calls = asyncio.run(_drive(url))
        assert len(pids) == WORKERS, f"only workers {pids} answered {calls} calls"
        assert str(proc.pid) not in pids  # the supervisor does not serve
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
    # Each worker closed its pool on the way out; nothing went wrong.
    assert proc.returncode in (0, -signal.SIGTERM), log_path.read_text()
    assert "Traceback" not in log_path.read_text()
