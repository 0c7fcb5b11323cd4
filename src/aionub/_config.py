"""Sandbox configuration: the ``**config`` of ``Sandbox.create``, with safe
defaults and validation that names the offending option."""

from __future__ import annotations

import dataclasses
import math
import signal
from dataclasses import dataclass
from typing import Any

from ._limits import check_cpu_timeout
from ._native import ffi, lib

__all__ = ("SandboxConfig",)

KiB = 1024
MiB = 1024 * KiB
_PAGE = 4096
#: The largest sig_rt_min_offset: SIGRTMIN + offset may not pass SIGRTMAX (30 with glibc).
MAX_SIG_RT_MIN_OFFSET = signal.SIGRTMAX - signal.SIGRTMIN
#: The placement option's values and their native constants.
_PLACEMENTS = {"scheduler": lib.AB_PLACEMENT_SCHEDULER, "colocate": lib.AB_PLACEMENT_COLOCATE}


@dataclass(frozen=True, slots=True)
class SandboxConfig:
    """Options of one sandbox. Sizes are bytes and multiples of 4 KiB;
    durations are seconds."""

    #: Total guest memory (image, buffers, heap, stack); at most 256 MiB.
    #: Only pages the guest touches use host memory.
    memory_size: int = 8 * MiB
    #: Guest stack; below it sits an unmapped guard page.
    stack_size: int = 256 * KiB
    #: Host -> guest buffer: the largest call request (name + arguments).
    input_size: int = 64 * KiB
    #: Guest -> host buffer: the largest result, log or host-call record.
    output_size: int = 64 * KiB
    #: InterruptHandle.kill() and the event loop re-send the kick signal at
    #: this interval until the vCPU has stopped.
    interrupt_retry_delay: float = 0.0005
    #: The kick signal is SIGRTMIN + this offset, at most SIGRTMAX - SIGRTMIN.
    #: It is never delivered, so it may be one the application uses too
    #: (docs/cancellation.md, "The kick signal").
    sig_rt_min_offset: int = 0
    #: Creation fails with InvalidGuest if the guest is not ready by then.
    init_timeout: float = 5.0
    #: Guest log bytes accepted per call (log records and writes to stdout
    #: and stderr during a call); the rest is dropped with a warning.
    max_log_bytes: int = 1 * MiB
    #: Bytes of stdout and of stderr that Sandbox.run() keeps, each; the
    #: rest is dropped and RunResult says it was truncated.
    max_output_bytes: int = 1 * MiB
    #: The vCPU thread polls this long for the next command before sleeping.
    spin_time: float = 0.0
    #: The default CPU-time budget of every call and run (seconds of CPU
    #: time the guest uses, host functions not counted; None: no budget).
    #: ``cpu_timeout=`` on a call overrides it; CpuTimeout when it runs out.
    cpu_timeout: float | None = None
    #: Where the vCPU thread runs: "scheduler" (the kernel decides) or
    #: "colocate": while no other call of the process is in flight, the
    #: thread that submits calls (the event loop's) is pinned to the CPU it
    #: is on and the vCPU thread to the same CPU, so a call's two hand-overs
    #: are context switches rather than cross-CPU wake-ups; both are
    #: unpinned while other calls are in flight, the vCPU thread also when a
    #: call runs longer than ``spread_after``, and the loop's thread gets
    #: its affinity back when the sandbox is closed. docs/deployment.md has
    #: the measurements.
    placement: str = "scheduler"
    #: With placement="colocate": unpin a call that runs this long.
    spread_after: float = 0.001
    #: Debugging (docs/debugging.md): False (default: int3 and single-step
    #: traps are guest faults), True (they pause the guest for a debugger:
    #: serve one with ``aionub.serve_gdb``), or an address to serve gdb's
    #: remote protocol on while the sandbox lives (asyncio only):
    #: ``"127.0.0.1:1234"`` (a host other than loopback must be explicit,
    #: port 0 picks a free one) or ``"unix:/path"``.
    debug: bool | str = False
    #: Directory for crash dumps: an ELF core file of the guest is written
    #: there when a call ends in a fault, an abort, a kill or a timeout,
    #: and the exception names it (docs/debugging.md). None: the
    #: environment variable AIONUB_CORE_DIR if set, else no dumps.
    core_dir: str | None = None

    @classmethod
    def from_kwargs(cls, options: dict[str, Any]) -> SandboxConfig:
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(options) - names)
        if unknown:
            raise TypeError(
                f"unknown sandbox option {unknown[0]!r} (known: {', '.join(sorted(names))})"
            )
        config = cls(**options)
        config.validate()
        return config

    def validate(self) -> None:
        for name in ("memory_size", "stack_size", "input_size", "output_size", "max_log_bytes", "max_output_bytes"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool):
                raise TypeError(f"{name} must be an int, not {type(value).__name__}")
            if value <= 0:
                raise ValueError(f"{name} must be positive, got {value}")
        for name in ("memory_size", "stack_size", "input_size", "output_size"):
            value = getattr(self, name)
            if value % _PAGE:
                raise ValueError(f"{name} must be a multiple of {_PAGE}, got {value}")
        for name, upper in (
            ("interrupt_retry_delay", 1.0), ("init_timeout", 3600.0), ("spin_time", 0.01), ("spread_after", 1.0),
        ):
            value = getattr(self, name)
            if not isinstance(value, int | float) or isinstance(value, bool):
                raise TypeError(f"{name} must be a number of seconds, not {type(value).__name__}")
            low_ok = value > 0 if name != "spin_time" else value >= 0
            if not (low_ok and value <= upper) or math.isnan(value):
                low = "[0" if name == "spin_time" else "(0"
                raise ValueError(f"{name} must be in {low}, {upper}] seconds, got {value}")
        check_cpu_timeout(self.cpu_timeout)
        if self.placement not in _PLACEMENTS:
            raise ValueError(
                f"placement must be one of {', '.join(map(repr, _PLACEMENTS))}, got {self.placement!r}"
            )
        if not isinstance(self.debug, bool | str):
            raise TypeError(f"debug must be a bool or a listen address (str), not {type(self.debug).__name__}")
        if isinstance(self.debug, str):
            from ._gdbaddr import parse_listen

            parse_listen(self.debug)  # raises ValueError naming what is wrong
        if self.core_dir is not None and not isinstance(self.core_dir, str):
            raise TypeError(f"core_dir must be a str (a directory) or None, not {type(self.core_dir).__name__}")
        offset = self.sig_rt_min_offset
        if not isinstance(offset, int) or isinstance(offset, bool):
            raise TypeError(f"sig_rt_min_offset must be an int, not {type(offset).__name__}")
        if not 0 <= offset <= MAX_SIG_RT_MIN_OFFSET:
            raise ValueError(
                f"sig_rt_min_offset must be between 0 and {MAX_SIG_RT_MIN_OFFSET} (SIGRTMIN..SIGRTMAX), got {offset}"
            )

    def to_native(self) -> Any:
        cfg = ffi.new("struct ab_config *")
        cfg.memory_size = self.memory_size
        cfg.stack_size = self.stack_size
        cfg.input_size = self.input_size
        cfg.output_size = self.output_size
        cfg.retry_delay_ns = int(self.interrupt_retry_delay * 1e9)
        cfg.sig_rt_min_offset = self.sig_rt_min_offset
        cfg.spin_ns = int(self.spin_time * 1e9)
        cfg.placement = _PLACEMENTS[self.placement]
        cfg.spread_ns = int(self.spread_after * 1e9)
        return cfg
