"""`python -m aionub`: the demo (the main job) and the guest compiler."""

from __future__ import annotations

import asyncio
import subprocess
import sys
from pathlib import Path

import aionub


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
