"""Starting a server under test in a subprocess on a free port of 127.0.0.1
(a socket bound here and handed over by fd), and waiting until it answers."""

from __future__ import annotations

import os
import socket
import subprocess
import time
from collections.abc import Callable, Mapping
from pathlib import Path

import pytest

httpx = pytest.importorskip("httpx")


def start(
    argv: Callable[[int], list[str]], env: Mapping[str, str], log_path: Path
) -> tuple[subprocess.Popen[bytes], str]:
    """Run ``argv(fd)`` (fd: the listening socket) and wait for ``/health``
    to answer 200; the server's output goes to ``log_path``."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.bind(("127.0.0.1", 0))
    sock.listen(64)
    url = f"http://127.0.0.1:{sock.getsockname()[1]}"
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(
            argv(sock.fileno()), pass_fds=(sock.fileno(),), env={**os.environ, **env},
            stdout=log, stderr=subprocess.STDOUT,
        )
    sock.close()
    deadline = time.monotonic() + 60
    while True:
        if proc.poll() is not None:
            pytest.fail(f"the server exited with {proc.returncode}:\n{log_path.read_text()}")
        try:
            if httpx.get(f"{url}/health", timeout=5).status_code == 200:
                return proc, url
        except httpx.TransportError:
            pass
        if time.monotonic() > deadline:
            proc.kill()
            proc.wait()
            pytest.fail(f"the server did not come up:\n{log_path.read_text()}")
        time.sleep(0.05)
