"""aionub: asyncio-native sandboxes that run untrusted guest functions in KVM
micro-VMs with no operating system.

    async with aionub.Sandbox.create(aionub.DEMO_GUEST) as sb:
        assert await sb.call("add", 2, 3) == 5
        await sb.call("spin", timeout=0.05)   # raises CallTimeout; the vCPU is stopped
"""

from __future__ import annotations

from . import telemetry as telemetry  # aionub.telemetry.configure(): docs/telemetry.md
from ._build import BuildError as BuildError, build_guest as build_guest
from ._config import SandboxConfig as SandboxConfig
from ._exceptions import (
    CallTimeout as CallTimeout,
    CpuTimeout as CpuTimeout,
    ExecutionCancelled as ExecutionCancelled,
    GuestAborted as GuestAborted,
    GuestFault as GuestFault,
    GuestFunctionNotFound as GuestFunctionNotFound,
    GuestProtocolError as GuestProtocolError,
    HostFunctionError as HostFunctionError,
    InvalidGuest as InvalidGuest,
    InvalidSnapshotFile as InvalidSnapshotFile,
    KvmUnavailable as KvmUnavailable,
    SandboxClosed as SandboxClosed,
    SandboxError as SandboxError,
    SandboxPoisoned as SandboxPoisoned,
    StackOverflow as StackOverflow,
    VmError as VmError,
)
from ._gdb import GdbServer as GdbServer, serve_gdb as serve_gdb
from ._interrupt import InterruptHandle as InterruptHandle
from ._native import process_stats as process_stats
from ._paths import DEMO_GUEST as DEMO_GUEST, JS_GUEST as JS_GUEST, LUA_GUEST as LUA_GUEST
from ._pool import PoolTimeout as PoolTimeout, SandboxPool as SandboxPool
from ._run import RunResult as RunResult
from ._sandbox import Sandbox as Sandbox
from ._scripts import (
    JsSandbox as JsSandbox,
    LuaSandbox as LuaSandbox,
    ScriptError as ScriptError,
    script_host_functions as script_host_functions,
)
from ._snapshot import Snapshot as Snapshot
from ._wire import GuestFunction as GuestFunction

__version__ = "0.1.0"

__all__ = (
    "BuildError",
    "CallTimeout",
    "CpuTimeout",
    "DEMO_GUEST",
    "ExecutionCancelled",
    "GuestAborted",
    "GuestFault",
    "GuestFunction",
    "GdbServer",
    "GuestFunctionNotFound",
    "GuestProtocolError",
    "HostFunctionError",
    "InterruptHandle",
    "InvalidGuest",
    "InvalidSnapshotFile",
    "JS_GUEST",
    "JsSandbox",
    "LUA_GUEST",
    "LuaSandbox",
    "PoolTimeout",
    "KvmUnavailable",
    "RunResult",
    "Sandbox",
    "SandboxClosed",
    "SandboxConfig",
    "SandboxError",
    "SandboxPoisoned",
    "SandboxPool",
    "ScriptError",
    "Snapshot",
    "StackOverflow",
    "VmError",
    "build_guest",
    "process_stats",
    "script_host_functions",
    "serve_gdb",
)
