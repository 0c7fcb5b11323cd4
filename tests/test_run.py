"""Sandbox.run(): the host side of running a guest's main() (argv, env and
stdin in; exit status, stdout and stderr out), with the CLI's `aionub run`.

Until the SDK runtime supports main(), a guest with main() is stood in for
by tests/hostile/fake_main.c, which speaks the run protocol itself. The
same behaviour through the real runtime (a guest built with main() by
aionub.build_guest) is in tests/test_run_e2e.py."""

from __future__ import annotations

import struct
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import anyio
import pytest

import aionub
from aionub import _abi
from aionub._run import check_argv, check_env, check_stdin, decode_exit, encode_run
from hostile import fake_main_guest

pytestmark = pytest.mark.anyio

ASYNCIO_ONLY = pytest.mark.parametrize("anyio_backend", [pytest.param(("asyncio", {}), id="asyncio")])


@pytest.fixture(scope="session")
def guest(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return fake_main_guest(tmp_path_factory)


# ---- encoding and decoding, no KVM -------------------------------------------------------------


@pytest.mark.no_kvm
def test_the_run_request_is_encoded_as_the_abi_says() -> None:
    assert encode_run(("prog", "é"), ("A=1",)) == (
        b"\x01"
        + struct.pack("<I", 2) + struct.pack("<I", 4) + b"prog\x00" + struct.pack("<I", 2) + "é".encode() + b"\x00"
        + struct.pack("<I", 1) + struct.pack("<I", 3) + b"A=1\x00"
    )
    assert encode_run(("p",), ()) == b"\x01" + struct.pack("<I", 1) + struct.pack("<I", 1) + b"p\x00" + bytes(4)


@pytest.mark.no_kvm
@pytest.mark.parametrize(
    ("argv", "error", "words"),
    [
        ("prog", TypeError, "sequence of str"),
        (b"prog", TypeError, "sequence of str"),
        (None, TypeError, "sequence of str"),
        (["prog", 1], TypeError, r"argv\[1\] must be a str"),
        (["prog", "a\x00b"], ValueError, r"argv\[1\] contains a NUL"),
    ],
)
def test_bad_argv_is_named(argv: Any, error: type[Exception], words: str) -> None:
    with pytest.raises(error, match=words):
        check_argv(argv, "guest")


@pytest.mark.no_kvm
def test_argv_and_env_and_stdin_are_normalised() -> None:
    assert check_argv([], "g.elf") == ("g.elf",)
    assert check_argv(("a", "b"), "g") == ("a", "b")
    assert check_env(None) == ()
    assert check_env({"A": "1", "B": "x=y", "C": ""}) == ("A=1", "B=x=y", "C=")
    assert check_stdin("é") == "é".encode()
    assert check_stdin(bytearray(b"x")) == b"x"
    assert check_stdin(memoryview(b"yz")) == b"yz"


@pytest.mark.no_kvm
@pytest.mark.parametrize(
    ("env", "error", "words"),
    [
        ([("A", "1")], TypeError, "mapping"),
        ({"A": 1}, TypeError, "str"),
        ({1: "a"}, TypeError, "str"),
        ({"": "a"}, ValueError, "non-empty"),
        ({"A=B": "a"}, ValueError, "'='"),
        ({"A\x00": "a"}, ValueError, "NUL"),
        ({"A": "a\x00"}, ValueError, "NUL"),
    ],
)
def test_bad_env_is_named(env: Any, error: type[Exception], words: str) -> None:
    with pytest.raises(error, match=words):
        check_env(env)


@pytest.mark.no_kvm
def test_bad_stdin_is_named() -> None:
    with pytest.raises(TypeError, match="stdin must be bytes or str"):
        check_stdin(3)
    with pytest.raises(ValueError, match="stdin is not valid Unicode"):
        check_stdin("\ud800")


def exit_record(code: int, status: int = _abi.STATUS_EXIT, extra: bytes = b"") -> tuple[memoryview, int]:
    data = bytes((status,)) + struct.pack("<i", code) + extra
    return memoryview(data), len(data)


@pytest.mark.no_kvm
@pytest.mark.parametrize("code", [0, 1, 255, -1, -6, -64])
def test_exit_codes_in_range_are_decoded(code: int) -> None:
    assert decode_exit(*exit_record(code), "p") == code


@pytest.mark.no_kvm
@pytest.mark.parametrize(
    ("record", "words"),
    [
        (exit_record(256), "exit code 256"),
        (exit_record(-65), "exit code -65"),
        (exit_record(-(2**31)), "exit code"),
        (exit_record(0, extra=b"x"), "trailing"),
        ((memoryview(b"\x03\x00\x00"), 3), "needs"),
        ((memoryview(b""), 0), "needs"),
        (exit_record(0, status=_abi.STATUS_OK), "status 0"),
        (exit_record(0, status=9), "status 9"),
    ],
)
def test_bad_exit_records_are_protocol_errors(record: tuple[memoryview, int], words: str) -> None:
    with pytest.raises(aionub.GuestProtocolError, match=words):
        decode_exit(*record, "p")


@pytest.mark.no_kvm
def test_run_result_is_like_completed_process() -> None:
    ok = aionub.RunResult(("p", "a"), 0, b"out", b"err")
    ok.check_returncode()
    assert not ok.stdout_truncated and not ok.stderr_truncated
    with pytest.raises(AttributeError):
        ok.returncode = 1  # type: ignore[misc]
    failed = aionub.RunResult(("p",), -6, b"", b"boom")
    with pytest.raises(subprocess.CalledProcessError) as info:
        failed.check_returncode()
    assert info.value.returncode == -6 and info.value.stderr == b"boom" and info.value.cmd == ["p"]


# ---- runs ------------------------------------------------------------------------------------


async def test_a_guest_without_main_cannot_run(guest: Path) -> None:
    async with aionub.Sandbox.create(aionub.DEMO_GUEST) as sb:
        with pytest.raises(aionub.GuestFunctionNotFound, match=r"demo\.elf has no main\(\)"):
            await sb.run(["demo"])
        assert not sb.poisoned
        assert await sb.call("add", 1, 2) == 3


async def test_run_passes_argv_env_and_stdin(guest: Path) -> None:
    async with aionub.Sandbox.create(guest) as sb:
        result = await sb.run(["prog", "echo", "hello", "wörld"])
        assert result == aionub.RunResult(("prog", "echo", "hello", "wörld"), 0, "hello wörld\n".encode(), b"")
        assert (await sb.run(["prog", "env"], env={"A": "1", "PATH": "/bin"})).stdout == b"A=1\nPATH=/bin\n"
        assert (await sb.run(["prog", "env"])).stdout == b""
        assert (await sb.run(["prog", "cat"], stdin="héllo")).stdout == "héllo".encode()


@ASYNCIO_ONLY
async def test_argv0_defaults_to_the_file_name(guest: Path) -> None:
    async with aionub.Sandbox.create(guest) as sb:
        assert (await sb.run([])).args == ("fake_main.elf",)
    async with aionub.Sandbox.create(guest.read_bytes()) as sb:
        assert (await sb.run(())).args == ("guest",)


@ASYNCIO_ONLY
@pytest.mark.parametrize("chunk", [1, 7, 1000, 0xFFFFFFFF])
async def test_stdin_is_read_in_order_in_any_chunk_size(guest: Path, chunk: int) -> None:
    data = bytes(range(256)) * (40 if chunk > 1 else 1)
    async with aionub.Sandbox.create(guest) as sb:
        result = await sb.run(["prog", "cat", str(min(chunk, 60000))], stdin=data)
        assert result.returncode == 0 and result.stdout == data


@ASYNCIO_ONLY
async def test_stdin_larger_than_the_buffers(guest: Path) -> None:
    data = bytes(range(256)) * 1024  # 256 KiB: four times the output buffer
    async with aionub.Sandbox.create(guest, max_output_bytes=1 << 20) as sb:
        assert (await sb.run(["prog", "cat", "60000"], stdin=data)).stdout == data


@ASYNCIO_ONLY
@pytest.mark.parametrize("code", [0, 1, 7, 255, -1, -6, -64])
async def test_exit_status(guest: Path, code: int) -> None:
    async with aionub.Sandbox.create(guest) as sb:
        assert (await sb.run(["prog", "exit", str(code)])).returncode == code


@ASYNCIO_ONLY
async def test_stdout_and_stderr_are_captured_separately(guest: Path) -> None:
    async with aionub.Sandbox.create(guest) as sb:
        result = await sb.run(["prog", "stderr", "oops"])
        assert (result.returncode, result.stdout, result.stderr) == (3, b"out", b"oops")


@ASYNCIO_ONLY
@pytest.mark.parametrize("stream", ["stdout", "stderr"])
async def test_output_is_bounded_by_max_output_bytes(guest: Path, stream: str) -> None:
    async with aionub.Sandbox.create(guest, max_output_bytes=10_000) as sb:
        argv = ["prog", "flood", "50000"] + (["2"] if stream == "stderr" else [])
        result = await sb.run(argv)
        assert result.returncode == 0
        assert getattr(result, stream) == b"x" * 10_000
        assert getattr(result, f"{stream}_truncated")
        other = "stderr" if stream == "stdout" else "stdout"
        assert not getattr(result, f"{other}_truncated")
        exact = await sb.run(["prog", "flood", "10000"] + (["2"] if stream == "stderr" else []))
        assert not exact.stdout_truncated and not exact.stderr_truncated


@pytest.mark.no_kvm
def test_max_output_bytes_is_checked() -> None:
    with pytest.raises(ValueError, match="max_output_bytes must be positive"):
        aionub.SandboxConfig.from_kwargs({"max_output_bytes": 0})
    with pytest.raises(TypeError, match="max_output_bytes must be an int"):
        aionub.SandboxConfig.from_kwargs({"max_output_bytes": 1.5})


@ASYNCIO_ONLY
async def test_a_request_larger_than_the_input_buffer_is_refused(guest: Path) -> None:
    async with aionub.Sandbox.create(guest, input_size=4096) as sb:
        with pytest.raises(ValueError, match="4096-byte input buffer"):
            await sb.run(["prog", "echo", "x" * 5000])
        with pytest.raises(ValueError, match="option input_size"):
            await sb.run(["prog", "env"], env={"A": "x" * 5000})
        assert not sb.poisoned
        assert (await sb.run(["prog", "echo", "x" * 4000])).stdout == b"x" * 4000 + b"\n"


@ASYNCIO_ONLY
async def test_bad_arguments_are_named_before_anything_runs(guest: Path) -> None:
    async with aionub.Sandbox.create(guest) as sb:
        with pytest.raises(TypeError, match="argv must be a sequence"):
            await sb.run("prog echo")  # type: ignore[arg-type]
        with pytest.raises(TypeError, match="timeout"):
            await sb.run(["p"], timeout="1")  # type: ignore[arg-type]
        with pytest.raises(TypeError, match="stdin"):
            await sb.run(["p"], stdin=1)  # type: ignore[arg-type]
        assert (await sb.run(["prog", "runs"])).returncode == 1


async def test_every_run_starts_from_a_fresh_state(guest: Path) -> None:
    async with aionub.Sandbox.create(guest) as sb:
        for _ in range(3):
            assert (await sb.run(["prog", "runs"])).returncode == 1  # the guest's own run counter


async def test_a_timeout_stops_a_run_and_the_next_run_works(guest: Path) -> None:
    async with aionub.Sandbox.create(guest) as sb:
        started = time.monotonic()
        with pytest.raises(aionub.CallTimeout, match=r"the run of prog did not finish within 0\.05 s"):
            await sb.run(["prog", "spin"], timeout=0.05)
        assert time.monotonic() - started < 2
        assert sb.poisoned
        with pytest.raises(aionub.SandboxPoisoned):
            await sb.snapshot()
        assert (await sb.run(["prog", "echo", "again"], timeout=5)).stdout == b"again\n"
        assert not sb.poisoned


async def test_cancellation_stops_a_sleeping_run(guest: Path) -> None:
    async with aionub.Sandbox.create(guest) as sb:
        with anyio.move_on_after(0.05) as scope:
            await sb.run(["prog", "sleep"])
        assert scope.cancelled_caught and sb.poisoned
        with pytest.raises(aionub.CallTimeout):
            await sb.run(["prog", "sleep"], timeout=0.05)
        assert (await sb.run(["prog", "exit", "4"])).returncode == 4


@ASYNCIO_ONLY
async def test_kill_and_fault_then_run_again(guest: Path) -> None:
    async with aionub.Sandbox.create(guest) as sb:
        handle = sb.interrupt_handle()

        async def kill_soon() -> None:
            await anyio.sleep(0.05)
            await anyio.to_thread.run_sync(handle.kill)

        async with anyio.create_task_group() as tg:
            tg.start_soon(kill_soon)
            with pytest.raises(aionub.ExecutionCancelled):
                await sb.run(["prog", "spin"])
        with pytest.raises(aionub.GuestFault):
            await sb.run(["prog", "fault"])
        assert (await sb.run(["prog", "runs"])).returncode == 1


@ASYNCIO_ONLY
@pytest.mark.parametrize("behaviour", ["bad_status", "trailing", "short"])
async def test_a_malformed_exit_is_a_protocol_error(guest: Path, behaviour: str) -> None:
    async with aionub.Sandbox.create(guest) as sb:
        with pytest.raises(aionub.GuestProtocolError, match="result of the run of prog"):
            await sb.run(["prog", behaviour])
        assert sb.poisoned
        assert (await sb.run(["prog", "runs"])).returncode == 1


@ASYNCIO_ONLY
@pytest.mark.parametrize("code", ["256", "-65", "-2147483648"])
async def test_an_exit_code_out_of_range_is_a_protocol_error(guest: Path, code: str) -> None:
    async with aionub.Sandbox.create(guest) as sb:
        with pytest.raises(aionub.GuestProtocolError, match=f"exit code {code}"):
            await sb.run(["prog", "exit", code])


@ASYNCIO_ONLY
async def test_a_refused_run_is_a_clean_error(guest: Path) -> None:
    async with aionub.Sandbox.create(guest) as sb:
        with pytest.raises(ValueError, match="guest rejected the run request for prog: nope"):
            await sb.run(["prog", "refuse"])
        assert not sb.poisoned


@ASYNCIO_ONLY
async def test_runs_and_snapshots(guest: Path) -> None:
    async with aionub.Sandbox.create(guest) as sb:
        boot = await sb.snapshot()  # the state after start-up: no command needed
        assert (await sb.run(["prog", "echo", "1"])).stdout == b"1\n"
        after = await sb.snapshot()
        await sb.restore(after)
        assert (await sb.run(["prog", "runs"])).returncode == 1  # runs restore the boot state anyway
        await sb.restore(boot)
        assert (await sb.run(["prog", "runs"])).returncode == 1


@ASYNCIO_ONLY
async def test_a_closed_sandbox_cannot_run(guest: Path) -> None:
    sb = await aionub.Sandbox.create(guest)
    await sb.aclose()
    with pytest.raises(aionub.SandboxClosed):
        await sb.run(["prog"])


async def test_close_stops_a_run(guest: Path) -> None:
    sb = await aionub.Sandbox.create(guest)
    errors: list[BaseException] = []

    async def runner() -> None:
        try:
            await sb.run(["prog", "spin"])
        except aionub.SandboxClosed as exc:
            errors.append(exc)

    async with anyio.create_task_group() as tg:
        tg.start_soon(runner)
        await anyio.sleep(0.05)
        await sb.aclose()
    assert len(errors) == 1


async def test_pool_runs(guest: Path) -> None:
    async with aionub.SandboxPool(guest, size=2, max_size=3) as pool:
        results: list[aionub.RunResult] = []

        async def one(i: int) -> None:
            results.append(await pool.run(["prog", "cat"], stdin=f"job {i}"))

        async with anyio.create_task_group() as tg:
            for i in range(8):
                tg.start_soon(one, i)
        assert sorted(r.stdout for r in results) == sorted(f"job {i}".encode() for i in range(8))
        with pytest.raises(aionub.CallTimeout):
            await pool.run(["prog", "spin"], timeout=0.05)
        assert (await pool.run(["prog", "runs"])).returncode == 1
        with pytest.raises(aionub.GuestFunctionNotFound):
            await pool.call("nothing")


@ASYNCIO_ONLY
async def test_pool_reuses_the_boot_snapshot(guest: Path) -> None:
    async with aionub.SandboxPool(guest, size=1) as pool:
        async with pool.acquire() as sb:
            rebuilt = sb.stats()
            assert (await sb.run(["prog", "runs"])).returncode == 1
            # No restore was needed before the run: one call, one KVM_RUN.
            assert sb.stats()["runs"] - rebuilt["runs"] == 1


# ---- the command line ----------------------------------------------------------------------


def cli(*args: str, stdin: bytes = b"") -> subprocess.CompletedProcess[bytes]:
    return subprocess.run(
        [sys.executable, "-m", "aionub", "run", *args], input=stdin, capture_output=True, timeout=120
    )


def test_cli_runs_a_guest(guest: Path) -> None:
    out = cli(str(guest), "echo", "hi", "there")
    assert (out.returncode, out.stdout, out.stderr) == (0, b"hi there\n", b"")
    out = cli(str(guest), "cat", stdin=b"piped\x00bytes")
    assert (out.returncode, out.stdout) == (0, b"piped\x00bytes")
    out = cli(str(guest), "argv0")
    assert out.stdout == b"fake_main.elf"
    out = cli(str(guest), "--", "echo", "-x", "--y")
    assert out.stdout == b"-x --y\n"


@pytest.mark.parametrize(("args", "code"), [(["exit", "7"], 7), (["exit", "-6"], 134), (["stderr", "e"], 3)])
def test_cli_exit_status(guest: Path, args: list[str], code: int) -> None:
    out = cli(str(guest), *args)
    assert out.returncode == code


def test_cli_errors_are_one_line(guest: Path, tmp_path: Path) -> None:
    out = cli(str(aionub.DEMO_GUEST))
    assert out.returncode == 2
    assert out.stderr.decode().count("\n") == 1 and "has no main()" in out.stderr.decode()
    out = cli(str(tmp_path / "missing.elf"))
    assert out.returncode == 1 and out.stderr.decode().startswith("aionub run: ")
    out = cli(str(guest), "spin", "--timeout", "0.1")
    assert out.returncode == 1 and "CallTimeout" in out.stderr.decode()
    out = cli(str(guest), "--timeout", "-1", "spin")
    assert out.returncode == 2 and b"must be 0 (no limit) or a positive number of seconds" in out.stderr


def test_cli_says_when_output_was_cut_off(guest: Path) -> None:
    out = cli(str(guest), "flood", str(2 << 20))
    assert out.returncode == 0
    assert len(out.stdout) == 1 << 20
    assert b"stdout was cut off after 1048576 bytes" in out.stderr
