"""Sandbox.run() end to end through the SDK runtime: a guest with main()
written against the SDK's libc (tests/run_guest/main.c), built with
aionub.build_guest.

Not collected until the SDK runtime supports main() (tests/conftest.py,
``collect_ignore``): remove it from that list once it does. From then on
nothing here skips: a runtime that does not run main() fails these tests.
"""

from __future__ import annotations

import errno
import subprocess
import sys
import time
from pathlib import Path

import anyio
import pytest

import aionub

pytestmark = pytest.mark.anyio

HERE = Path(__file__).resolve().parent


@pytest.fixture(scope="session")
def guest(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("run-guest") / "main.elf"
    return aionub.build_guest([HERE / "run_guest" / "main.c"], out)


async def test_the_guest_has_main(guest: Path) -> None:
    async with aionub.Sandbox.create(guest) as sb:
        assert sb._engine.has_main, "the SDK runtime did not report AB_READY_HAS_MAIN for a guest with main()"


async def test_argv_env_stdin_stdout(guest: Path) -> None:
    async with aionub.Sandbox.create(guest) as sb:
        assert await sb.run(["prog", "echo", "hello", "wörld"]) == aionub.RunResult(
            ("prog", "echo", "hello", "wörld"), 0, "hello wörld\n".encode(), b""
        )
        assert (await sb.run(["prog", "argv0"])).stdout == b"prog"
        assert (await sb.run([])).args == ("main.elf",)
        assert (await sb.run(["p", "getenv", "HOME"], env={"HOME": "/home/x"})).stdout == b"/home/x\n"
        assert (await sb.run(["p", "getenv", "HOME"])).stdout == b"(unset)\n"
        data = bytes(range(256)) * 512  # larger than the buffers
        assert (await sb.run(["p", "cat"], stdin=data)).stdout == data
        result = await sb.run(["p", "stderr"])
        assert (result.returncode, result.stdout, result.stderr) == (3, b"out\n", b"oops\n")


@pytest.mark.parametrize(("args", "code"), [(["exit", "0"], 0), (["exit", "7"], 7), (["exit", "255"], 255),
                                            (["return", "300"], 300 & 0xFF), (["abort"], -6)])
async def test_exit_status(guest: Path, args: list[str], code: int) -> None:
    async with aionub.Sandbox.create(guest) as sb:
        assert (await sb.run(["p", *args])).returncode == code


async def test_each_run_is_a_fresh_process(guest: Path) -> None:
    async with aionub.Sandbox.create(guest) as sb:
        for _ in range(3):
            assert (await sb.run(["p", "runs"])).returncode == 1
            assert (await sb.run(["p", "tls"])).returncode == 42  # thread-local storage works


async def test_clock_random_sleep(guest: Path) -> None:
    async with aionub.Sandbox.create(guest) as sb:
        before = time.monotonic_ns()
        sec, nsec = map(int, (await sb.run(["p", "clock"])).stdout.split())
        assert before <= sec * 10**9 + nsec <= time.monotonic_ns()
        a = (await sb.run(["p", "random"])).stdout
        b = (await sb.run(["p", "random"])).stdout
        assert len(a) == 33 and a != b
        started = time.monotonic()
        assert (await sb.run(["p", "sleep", "0"])).returncode == 0
        with pytest.raises(aionub.CallTimeout):
            await sb.run(["p", "sleep", "10"], timeout=0.1)
        assert time.monotonic() - started < 3


async def test_files(guest: Path) -> None:
    async with aionub.Sandbox.create(guest, files={"/data/in.txt": b"contents\n" * 1000}) as sb:
        assert (await sb.run(["p", "file", "/data/in.txt"])).stdout == b"contents\n" * 1000
        missing = await sb.run(["p", "file", "/data/missing"])
        assert missing.returncode == 1 and b"/data/missing" in missing.stderr
        assert (errno.errorcode[errno.ENOENT] in missing.stderr.decode()
                or "No such file" in missing.stderr.decode())


async def test_faults_timeouts_and_the_pool(guest: Path) -> None:
    async with aionub.Sandbox.create(guest) as sb:
        with pytest.raises(aionub.GuestFault):
            await sb.run(["p", "segv"])
        with pytest.raises(aionub.CallTimeout):
            await sb.run(["p", "spin"], timeout=0.05)
        with anyio.move_on_after(0.05):
            await sb.run(["p", "spin"])
        assert (await sb.run(["p", "runs"])).returncode == 1
    async with aionub.SandboxPool(guest, size=2) as pool:
        results = []

        async def one(i: int) -> None:
            results.append((await pool.run(["p", "cat"], stdin=f"{i}")).stdout)

        async with anyio.create_task_group() as tg:
            for i in range(6):
                tg.start_soon(one, i)
        assert sorted(results) == sorted(str(i).encode() for i in range(6))


async def test_output_is_bounded(guest: Path) -> None:
    async with aionub.Sandbox.create(guest, max_output_bytes=1000) as sb:
        result = await sb.run(["p", "flood", "5000"])
        assert result.stdout == b"x" * 1000 and result.stdout_truncated


def test_cli(guest: Path) -> None:
    out = subprocess.run([sys.executable, "-m", "aionub", "run", str(guest), "cat"], input=b"piped",
                         capture_output=True, timeout=120)
    assert (out.returncode, out.stdout) == (0, b"piped")
    out = subprocess.run([sys.executable, "-m", "aionub", "run", str(guest), "abort"], capture_output=True,
                         timeout=120)
    assert out.returncode == 128 + 6
