"""A call's limits: its wall-clock ``timeout`` and its ``cpu_timeout`` (CPU
time the guest may use), checked here once and enforced by the kernel.

The C core arms a timer on the vCPU thread for each (native/limits.c): the
deadline on CLOCK_MONOTONIC, the budget on the thread's CPU-time clock (watched
by a CLOCK_MONOTONIC sampler).
When one runs out the guest is stopped on the spot and the vCPU thread
reports TIMEOUT or CPU_TIMEOUT, which become :class:`CallTimeout` and
:class:`CpuTimeout` here. Time in host functions is cut at the deadline by
the event loop (the engine serves them under it). The loop arms no timer of
its own for a deadline the kernel enforces: the kernel's cannot be lost
(native/limits.c), and one timer on the loop per call would cost more than
a third of a short call."""

from __future__ import annotations

import math
import time

import anyio

from ._exceptions import CallTimeout, CpuTimeout

__all__ = ("CallLimits", "NO_LIMITS", "call_limits", "check_cpu_timeout", "check_seconds", "sleep_until_ns")

#: The longest cpu_timeout: an hour, like init_timeout.
MAX_CPU_TIMEOUT = 3600.0
#: Timeouts longer than this (about 115 days) get no kernel timer: the
#: event loop's timer enforces them (a CLOCK_MONOTONIC deadline in
#: nanoseconds must fit 64 bits).
MAX_KERNEL_TIMEOUT = 1e7


async def sleep_until_ns(deadline_ns: int) -> None:
    """Sleep on the event loop until CLOCK_MONOTONIC (``time.monotonic_ns``,
    the guest's clock and the kernel deadline's) reaches ``deadline_ns``. A
    loop's timer may fire a little early by that clock (uvloop's are in
    whole milliseconds): then sleep again for what is left."""
    while (left := deadline_ns - time.monotonic_ns()) > 0:
        await anyio.sleep(left / 1e9)


def check_seconds(name: str, value: object) -> float | None:
    """A ``timeout``-like argument: None, or a non-negative number of
    seconds; infinity means no limit (None)."""
    if value is None:
        return None
    if not isinstance(value, int | float) or isinstance(value, bool):
        raise TypeError(f"{name} must be a number of seconds or None, not {type(value).__name__}")
    if math.isnan(value) or value < 0:
        raise ValueError(f"{name} must be a non-negative number of seconds, got {value}")
    return None if math.isinf(value) else float(value)


def check_cpu_timeout(value: object) -> float | None:
    """``cpu_timeout``: None, or a positive number of seconds up to an hour."""
    seconds = check_seconds("cpu_timeout", value)
    if seconds is not None and not 0 < seconds <= MAX_CPU_TIMEOUT:
        raise ValueError(f"cpu_timeout must be in (0, {MAX_CPU_TIMEOUT:g}] seconds, got {value}")
    return seconds


class CallLimits:
    """The limits of one call or run, fixed when it starts."""

    __slots__ = ("timeout", "cpu_timeout", "loop_deadline", "deadline_ns", "cpu_ns")

    def __init__(self, timeout: float | None, cpu_timeout: float | None, loop_now: float | None) -> None:
        self.timeout = timeout
        self.cpu_timeout = cpu_timeout
        #: The deadline on the event loop's clock (None: no timeout).
        self.loop_deadline = None if timeout is None or loop_now is None else loop_now + timeout
        #: The same deadline on CLOCK_MONOTONIC, for the kernel timer (0: none).
        #: Event loops keep their own clocks (uvloop's is cached, trio's is
        #: offset), so it is taken from the system clock, not the loop's.
        if timeout is None or timeout > MAX_KERNEL_TIMEOUT:
            self.deadline_ns = 0
        else:
            self.deadline_ns = time.monotonic_ns() + max(1, round(timeout * 1e9))
        #: The CPU-time budget in nanoseconds (0: none).
        self.cpu_ns = 0 if cpu_timeout is None else max(1, round(cpu_timeout * 1e9))

    async def not_before_deadline(self) -> None:
        """Return once CLOCK_MONOTONIC has reached the deadline: the loop's
        timer that cut host work short at it may have fired early, and no
        CallTimeout is raised before its time."""
        if self.deadline_ns:
            await sleep_until_ns(self.deadline_ns)

    def poison_reason(self, what: str, cpu: bool = False) -> str:
        """Why the sandbox is poisoned after one of the limits stopped it."""
        if cpu:
            return f"{what} used up its CPU-time budget of {self.cpu_timeout:g} s"
        return f"{what} timed out after {self.timeout:g} s"

    def timeout_error(self, what: str) -> CallTimeout:
        return CallTimeout(f"{what} did not finish within {self.timeout:g} s; the guest was stopped")

    def cpu_error(self, what: str, used_ns: int) -> CpuTimeout:
        used = used_ns / 1e9
        return CpuTimeout(
            f"{what} used up its CPU-time budget of {self.cpu_timeout:g} s "
            f"(the guest ran for {used:.6f} s of CPU time); the guest was stopped",
            cpu_timeout=float(self.cpu_timeout or 0.0),
            cpu_time=used,
        )


#: The limits of a call with neither: shared, as most calls have none.
NO_LIMITS = CallLimits(None, None, None)


def call_limits(timeout: float | None, cpu_timeout: float | None, loop_now: float | None) -> CallLimits:
    """The limits of a call starting now (``loop_now`` on the loop's clock)."""
    if timeout is None and cpu_timeout is None:
        return NO_LIMITS
    return CallLimits(timeout, cpu_timeout, loop_now)
