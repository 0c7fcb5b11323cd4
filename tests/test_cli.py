"""`python -m aionub`: the demo (the main job) and the guest compiler."""

from __future__ import annotations

import asyncio
import json
import os
import pty
import subprocess
import sys
from pathlib import Path

import pytest

import aionub
from aionub._cli import main


def run(*args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "aionub", *args], capture_output=True, text=True, timeout=timeout)


def test_demo_runs_and_prints_a_summary() -> None:
    out = run("demo", "--duration", "1", "--sandboxes", "3")
    assert out.returncode == 0, out.stderr
    text = out.stdout
    assert "aionub demo: 3 sandboxes" in text
    for line in ("calls", "latency  p50", "kills", "errors          0"):
        assert line in text, text
    calls = int(text.split("calls")[1].split()[0])
    kills = int(text.split("kills")[1].split()[0])
    assert calls > 100 and kills > 0


def test_demo_on_uvloop() -> None:
    out = run("demo", "--duration", "0.5", "--uvloop")
    assert out.returncode == 0, out.stderr
    assert "errors          0" in out.stdout


def test_demo_rejects_bad_arguments() -> None:
    out = run("demo", "--sandboxes", "0")
    assert out.returncode == 2
    assert "must be positive" in out.stderr


def test_build_compiles_a_guest_that_runs(tmp_path: Path) -> None:
    src = tmp_path / "square.c"
    src.write_text(
        "#include <aionub_guest.h>\n"
        "static int64_t square(int64_t x) { return x * x; }\n"
        "AB_EXPORT(square, AB_INT, AB_INT);\n"
    )
    elf = tmp_path / "out" / "square.elf"
    out = run("build", str(src), "-o", str(elf))
    assert out.returncode == 0, out.stderr
    assert Path(out.stdout.strip()) == elf

    async def check() -> int:
        async with aionub.Sandbox.create(elf) as sb:
            return await sb.call("square", 12)  # type: ignore[no-any-return]

    assert asyncio.run(check()) == 144


def test_build_reports_compiler_errors(tmp_path: Path) -> None:
    src = tmp_path / "broken.c"
    src.write_text("this is not C\n")
    out = run("build", str(src), "-o", str(tmp_path / "broken.elf"))
    assert out.returncode == 1
    assert "aionub build:" in out.stderr and "error" in out.stderr


# ---- inspect and call (in-process: main() runs its own event loop) ----------


def cli(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    code = main(list(args))
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def test_inspect_lists_signatures(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = cli(capsys, "inspect", str(aionub.DEMO_GUEST))
    assert code == 0
    lines = out.splitlines()
    assert "add(int, int) -> int" in lines
    assert "echo(bytes) -> bytes" in lines
    assert "noop() -> None" in lines
    assert len(lines) == 14


def test_inspect_json(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = cli(capsys, "inspect", "demo", "--json")
    assert code == 0
    listing = {fn["name"]: fn for fn in json.loads(out)}
    assert listing["call_host"] == {"name": "call_host", "params": ["str", "int"], "returns": "int"}


def test_inspect_reports_a_bad_guest(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    bad = tmp_path / "bad.elf"
    bad.write_bytes(b"not an elf")
    code, out, err = cli(capsys, "inspect", str(bad))
    assert code == 1 and out == ""
    assert err.startswith("aionub inspect: InvalidGuest: ") and err.count("\n") == 1


@pytest.mark.parametrize(
    ("args", "printed"),
    [
        (("add", "2", "-5"), "-3"),
        (("mul", "1.5", "2"), "3.0"),
        (("upper", "hello"), '"HELLO"'),
        (("upper", '"42"'), '"42"'),
        (("upper", "--", "-x"), '"-X"'),
        (("echo", '{"base64": "AAH/"}'), '{"base64": "AAH/"}'),
        (("noop",), "null"),
    ],
)
def test_call_prints_the_result_as_json(
    capsys: pytest.CaptureFixture[str], args: tuple[str, ...], printed: str
) -> None:
    code, out, err = cli(capsys, "call", "demo", *args)
    assert (code, out, err) == (0, printed + "\n", "")


def test_call_shows_guest_logs_on_stderr(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = cli(capsys, "call", "demo", "log", "hi there")
    assert code == 0 and out == "null\n"
    assert "aionub.guest" in err and "hi there" in err


@pytest.mark.parametrize(
    ("args", "code", "error"),
    [
        (("spin", "--timeout", "0.05"), 1, "CallTimeout: spin() did not finish within 0.05 s"),
        (("spin", "--cpu-timeout", "0.05"), 1, "CpuTimeout: spin() used up its CPU-time budget of 0.05 s"),
        (("fault", "read_null"), 1, "GuestFault: "),
        (("abort", "7", "boom"), 1, "GuestAborted: guest aborted with code 7: boom"),
        (("nope",), 2, "GuestFunctionNotFound: "),
        (("add", "1"), 2, "TypeError: add() takes 2 arguments (1 given)"),
        (("add", "1", "x"), 2, "TypeError: add() argument 2 must be int, not str"),
        (("echo", "[1, 2]"), 2, "TypeError: echo() argument 1 must be bytes, not list"),
        (("echo", '{"base64": "!!"}'), 2, "ValueError: invalid base64"),
        (("echo", '{"b64": ""}'), 2, "TypeError: echo() argument 1 must be bytes, not dict"),
        (("echo", '[{"base64": "!!"}]'), 2, "ValueError: invalid base64"),
    ],
)
def test_call_errors_are_one_line_with_an_exit_code(
    capsys: pytest.CaptureFixture[str], args: tuple[str, ...], code: int, error: str
) -> None:
    got, out, err = cli(capsys, "call", "demo", *args)
    assert got == code and out == ""
    assert err.startswith("aionub call: " + error), err
    assert err.count("\n") == 1


@pytest.mark.parametrize("option", ["--timeout", "--cpu-timeout"])
@pytest.mark.parametrize("value", ["-1", "nan", "soon"])
def test_call_timeout_must_be_a_number_of_seconds(
    capsys: pytest.CaptureFixture[str], option: str, value: str
) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main(["call", "demo", "noop", option, value])
    assert exit_info.value.code == 2
    assert option in capsys.readouterr().err


def test_cpu_timeout_on_every_command_that_runs_guest_code(capsys: pytest.CaptureFixture[str]) -> None:
    from aionub._cli import _parser

    for command in (["call", "demo", "spin"], ["run", "guest.elf"], ["js", "-e", "1"], ["lua", "-e", "1"]):
        assert _parser().parse_args(command).cpu_timeout is None  # no budget unless asked
        assert _parser().parse_args([*command, "--cpu-timeout", "0.5"]).cpu_timeout == 0.5
    got, out, err = cli(capsys, "js", "-e", "for (;;) {}", "--cpu-timeout", "0.05")
    assert got == 1 and out == ""
    assert err.startswith("aionub js: CpuTimeout: eval() used up its CPU-time budget of 0.05 s"), err


def test_call_and_run_stop_the_guest_after_a_default_timeout() -> None:
    from aionub._cli import DEFAULT_TIMEOUT, _parser

    for command in (["call", "demo", "spin"], ["run", "guest.elf"]):
        assert _parser().parse_args(command).timeout == DEFAULT_TIMEOUT
        assert _parser().parse_args([*command, "--timeout", "0"]).timeout is None  # no limit
        assert _parser().parse_args([*command, "--timeout", "2.5"]).timeout == 2.5
    proc = run("call", "demo", "spin", "--timeout", "0.2")
    assert proc.returncode == 1 and proc.stderr.startswith("aionub call: CallTimeout"), proc.stderr


def test_call_usage_names_only_what_is_missing(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        main(["call", "demo"])
    err = capsys.readouterr().err
    assert "required: FUNCTION" in err and "ARG" not in err.splitlines()[-1]


@pytest.mark.parametrize("command", [["call", "demo", "spin"], ["demo", "--duration", "30"]])
def test_ctrl_c_is_one_line_and_exit_status_130(command: list[str]) -> None:
    import signal
    import time

    proc = subprocess.Popen([sys.executable, "-m", "aionub", *command], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    time.sleep(2.0)  # the sandbox is up and the guest spinning
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=30)
    assert proc.returncode == 130, (out, err)
    assert err.strip().splitlines()[-1] == f"aionub {command[0]}: interrupted", err
    assert "Traceback" not in err


@pytest.mark.parametrize("command", ["demo", "build", "inspect", "call", "run"])
def test_every_command_has_help(capsys: pytest.CaptureFixture[str], command: str) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main([command, "--help"])
    assert exit_info.value.code == 0
    assert f"usage: aionub {command}" in capsys.readouterr().out


def test_console_script_calls_a_guest() -> None:
    script = Path(sys.executable).parent / "aionub"
    if not script.exists():
        pytest.skip("the aionub console script is not installed beside this interpreter")
    out = subprocess.run([str(script), "call", "demo", "add", "40", "2"], capture_output=True, text=True, timeout=60)
    assert (out.returncode, out.stdout) == (0, "42\n"), out.stderr


def test_demo_on_a_terminal_shows_live_progress_and_a_table() -> None:
    primary, secondary = pty.openpty()
    proc = subprocess.Popen(
        [sys.executable, "-m", "aionub", "demo", "--duration", "0.8", "--sandboxes", "2"],
        stdout=secondary,
        stderr=subprocess.PIPE,
    )
    os.close(secondary)
    chunks = []
    while True:
        try:
            chunk = os.read(primary, 4096)
        except OSError:  # EIO: the child closed the terminal
            break
        if not chunk:
            break
        chunks.append(chunk)
    os.close(primary)
    assert proc.wait(timeout=60) == 0, proc.stderr.read() if proc.stderr else ""
    text = b"".join(chunks).decode()
    assert "calls/s" in text and "\r\x1b[K" in text  # a status line rewritten in place
    assert "kills" in text and "errors" in text
    assert "aionub demo: 2 sandboxes" in text
    assert "function" in text and "p99 µs" in text  # the per-function table


def test_json_arrays_and_objects_become_lists_and_dicts() -> None:
    from aionub._cli import parse_value, to_json

    assert parse_value('[1, {"a": [true, null]}, {"base64": "aGk="}]') == [1, {"a": [True, None]}, b"hi"]
    assert to_json([b"hi", {"k": b""}]) == '[{"base64": "aGk="}, {"k": {"base64": ""}}]'
