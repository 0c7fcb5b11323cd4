"""The hostile-guest corpus: C guests written with the SDK, compiled by the
tests with ``aionub.build_guest`` and cached for the test session.

``hostile.c`` exports one function per misbehaviour after start-up;
``syscalls.c`` makes raw system requests (AB_PORT_SYS) built by the tests;
``fake_main.c`` stands in for a guest with main() (it speaks the run
protocol itself, without the SDK runtime);
``bad_init.c`` misbehaves before the guest is ready, in the way selected by
its stack size (``bad_init_options``)."""

from __future__ import annotations

import os
import subprocess
import threading
from pathlib import Path
from typing import Any

import pytest

import aionub

HERE = Path(__file__).resolve().parent

#: bad_init.c's behaviours; the guest reads the number from its stack size.
BAD_INIT = {
    "table_garbage": 1,
    "table_len_lie": 2,
    "table_bad_tag": 3,
    "table_duplicate": 4,
    "result_first": 5,
    "spin": 6,
    "fault": 7,
    "abort": 8,
    "privileged": 9,
    "table_huge_count": 10,
    "hostcall": 11,
    "log": 12,
}
_BAD_INIT_BASE = 32  # pages; BAD_INIT_BASE in bad_init.c


def bad_init_options(behaviour: str) -> dict[str, Any]:
    """The sandbox options that make bad_init.c misbehave this way."""
    return {"stack_size": (_BAD_INIT_BASE + BAD_INIT[behaviour]) * 4096}


_lock = threading.Lock()
_built: dict[str, Path] = {}


def _out_dir(factory: pytest.TempPathFactory) -> Path:
    out = factory.getbasetemp() / "hostile-guests"
    out.mkdir(exist_ok=True)
    return out


def _build(factory: pytest.TempPathFactory, name: str) -> Path:
    with _lock:
        if name not in _built:
            _built[name] = aionub.build_guest([HERE / f"{name}.c"], _out_dir(factory) / f"{name}.elf")
        return _built[name]


def bad_init_guest(factory: pytest.TempPathFactory) -> Path:
    """``bad_init.c``, built once per session."""
    return _build(factory, "bad_init")


def hostile_guest(factory: pytest.TempPathFactory) -> Path:
    """``hostile.c``, built once per session."""
    return _build(factory, "hostile")


def syscalls_guest(factory: pytest.TempPathFactory) -> Path:
    """``syscalls.c`` (raw system requests), built once per session."""
    return _build(factory, "syscalls")


def fake_main_guest(factory: pytest.TempPathFactory) -> Path:
    """``fake_main.c``, compiled without the SDK runtime (its own _start),
    with the SDK's flags and linker script; built once per session."""
    from aionub._build import GUEST_CFLAGS, GUEST_LDFLAGS, SdkLayout, find_compiler

    with _lock:
        if "fake_main" not in _built:
            out = _out_dir(factory) / "fake_main.elf"
            layout = SdkLayout.installed()
            # The compiler's stdint.h; no canary (nothing sets up TLS); the
            # libc's archive only for the string functions gcc calls.
            flags = [f for f in GUEST_CFLAGS if f not in ("-nostdinc", "-fstack-protector-strong")]
            include = HERE.parents[1] / "native" / "include"
            cmd = [*find_compiler(), *flags, "-fno-stack-protector", "-I", os.fspath(include),
                   os.fspath(HERE / "fake_main.c"), "-o", os.fspath(out), *GUEST_LDFLAGS,
                   "-T", os.fspath(layout.linker_script), os.fspath(layout.libc_archive)]
            subprocess.run(cmd, check=True, capture_output=True)
            _built["fake_main"] = out
        return _built["fake_main"]
