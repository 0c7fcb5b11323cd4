from __future__ import annotations

import re
from pathlib import Path

import pytest

import aionub
from aionub import _abi

pytestmark = pytest.mark.no_kvm


def test_public_names() -> None:
    assert set(aionub.__all__) == {
        "BuildError", "CallTimeout", "CpuTimeout", "DEMO_GUEST", "ExecutionCancelled", "GuestAborted", "GuestFault",
        "GuestFunction", "GuestFunctionNotFound", "GuestProtocolError", "HostFunctionError",
        "InterruptHandle", "InvalidGuest", "InvalidSnapshotFile",
        "PoolTimeout", "SandboxPool", "KvmUnavailable", "RunResult", "Sandbox",
        "SandboxClosed",
        "SandboxConfig",
        "SandboxError", "SandboxPoisoned", "Snapshot", "StackOverflow", "VmError", "build_guest", "process_stats",
        "JS_GUEST", "LUA_GUEST", "JsSandbox", "LuaSandbox", "ScriptError", "script_host_functions",
        "GdbServer", "serve_gdb",
    }
    for name in aionub.__all__:
        assert hasattr(aionub, name), name


def test_interrupt_handle_has_the_seeds_methods() -> None:
    for name in ("kill", "dropped", "kill_from_debugger", "is_debug_interrupted", "clear_debug_interrupt"):
        assert callable(getattr(aionub.InterruptHandle, name)), name


def test_exception_hierarchy() -> None:
    for name in ("CallTimeout", "CpuTimeout", "ExecutionCancelled", "GuestAborted", "GuestFault", "StackOverflow",
                 "GuestFunctionNotFound", "HostFunctionError", "SandboxPoisoned", "SandboxClosed",
                 "InvalidGuest", "KvmUnavailable", "InvalidSnapshotFile"):
        assert issubclass(getattr(aionub, name), aionub.SandboxError), name
    assert issubclass(aionub.InvalidSnapshotFile, ValueError)
    assert issubclass(aionub.CallTimeout, TimeoutError)
    assert issubclass(aionub.StackOverflow, aionub.GuestFault)


def test_demo_guest_is_installed() -> None:
    assert Path(aionub.DEMO_GUEST).is_file()
    assert Path(aionub.DEMO_GUEST).read_bytes()[:4] == b"\x7fELF"


def test_python_abi_constants_match_the_header() -> None:
    header = (Path(__file__).resolve().parents[1] / "native" / "include" / "aionub" / "abi.h").read_text()
    defines = dict(re.findall(r"#define AB_(\w+)\s+(\w+)", header))
    for name in ("TAG_NONE", "TAG_BOOL", "TAG_INT", "TAG_FLOAT", "TAG_STR", "TAG_BYTES", "TAG_LIST", "TAG_DICT",
                 "TAG_ANY", "MAX_DEPTH", "MIN_VALUE_SIZE", "MIN_ENTRY_SIZE", "STATUS_OK",
                 "STATUS_NOT_FOUND", "STATUS_BAD_ARGS", "STATUS_EXIT", "REQ_CALL", "REQ_RUN",
                 "SYS_CLOCK", "SYS_RANDOM", "SYS_SET_FS", "SYS_WRITE", "SYS_READ", "SYS_STAT", "SYS_PREAD",
                 "SYS_SLEEP", "SYS_REPLY_HEADER", "REPLY_OK", "REPLY_ERROR", "MAX_PARAMS", "MAX_NAME"):
        assert int(defines[name], 0) == getattr(_abi, name), name
