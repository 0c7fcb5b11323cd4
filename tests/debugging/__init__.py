"""The debugger tests' guest, built once with -g -O0."""

from __future__ import annotations

from pathlib import Path

from tests.guestbuild import build_cached

HERE = Path(__file__).parent


def debuggee() -> Path:
    return build_cached("debuggee", [HERE / "debuggee.c"], cflags=["-g", "-O0"])
