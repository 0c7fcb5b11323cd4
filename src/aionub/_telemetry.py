"""OpenTelemetry instrumentation: the only module that imports opentelemetry.

The rest of aionub reads one module attribute, :data:`hooks`: None when
telemetry is off (opentelemetry-api not installed, no provider configured,
or only no-op providers), else a :class:`Telemetry` holding the tracer and
the instruments. It is decided by :func:`configure` or, until that is
called, re-checked when a sandbox is created or a pool started (both cost
milliseconds anyway): a global provider installed by the application is
picked up from then on. A call on a sandbox pays one attribute check when
telemetry is off. ``docs/telemetry.md`` lists the spans, metrics and
attributes.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Coroutine, Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any, TypeVar

import anyio

from ._exceptions import (
    CallTimeout,
    CpuTimeout,
    ExecutionCancelled,
    GuestAborted,
    GuestFault,
    GuestFunctionNotFound,
    GuestProtocolError,
    HostFunctionError,
    InvalidGuest,
    SandboxClosed,
    SandboxPoisoned,
    VmError,
)

if TYPE_CHECKING:
    from opentelemetry.metrics import MeterProvider
    from opentelemetry.trace import Span, TracerProvider

    from ._engine import Engine

try:
    from opentelemetry import metrics as _metrics, trace as _trace
    from opentelemetry.metrics import NoOpMeterProvider as _NoOpMeterProvider
    from opentelemetry.trace import (
        NoOpTracerProvider as _NoOpTracerProvider,
        ProxyTracerProvider as _ProxyTracerProvider,
        Status as _Status,
        StatusCode as _StatusCode,
    )
except ImportError:  # the optional extra aionub[otel] is not installed
    AVAILABLE = False
else:
    AVAILABLE = True

__all__ = ("AVAILABLE", "Telemetry", "configure", "disable", "hooks", "refresh", "reset", "outcome_of")

NAME = "aionub"
T = TypeVar("T")

#: The active instrumentation, or None: the one thing the hot path reads.
hooks: Telemetry | None = None

# "auto" (follow the global providers, checked at each create/start), or
# "explicit" (configure() decided: hooks stays as it set it).
_mode = "auto"


# ---- deciding ----------------------------------------------------------------------------


def _unset_tracer(provider: object) -> bool:
    return isinstance(provider, _ProxyTracerProvider | _NoOpTracerProvider)


def _unset_meter(provider: object) -> bool:
    # The API's default global meter provider is a private proxy class.
    return isinstance(provider, _NoOpMeterProvider) or type(provider).__name__ == "_ProxyMeterProvider"


def configure(
    tracer_provider: TracerProvider | None = None,
    meter_provider: MeterProvider | None = None,
) -> bool:
    """Send aionub's spans to ``tracer_provider`` and its metrics to
    ``meter_provider``; either left None means the OpenTelemetry global one
    (looked up by the API when used, so one set later is followed too).
    Returns whether telemetry is on: off when both end up no-op
    (``NoOpTracerProvider``/``NoOpMeterProvider``, or a None whose global is
    unset). Takes effect for calls that start afterwards. Raises
    RuntimeError when opentelemetry-api is not installed
    (``pip install 'aionub[otel]'``)."""
    global hooks, _mode
    if not AVAILABLE:
        raise RuntimeError("telemetry needs opentelemetry-api: pip install 'aionub[otel]'")
    _mode = "explicit"
    tracer_off = _unset_tracer(tracer_provider if tracer_provider is not None else _trace.get_tracer_provider())
    meter_off = _unset_meter(meter_provider if meter_provider is not None else _metrics.get_meter_provider())
    if tracer_off and meter_off and (tracer_provider is not None or meter_provider is not None):
        hooks = None  # explicitly no-op
        return False
    hooks = Telemetry(tracer_provider, meter_provider)
    return True


def disable() -> None:
    """Turn telemetry off until :func:`configure` or :func:`reset`."""
    global hooks, _mode
    _mode = "explicit"
    hooks = None


def reset() -> None:
    """Forget :func:`configure`/:func:`disable`: follow the global providers
    again (telemetry is on once the application has set one)."""
    global hooks, _mode
    _mode = "auto"
    hooks = None
    refresh()


def refresh() -> Telemetry | None:
    """In auto mode, turn telemetry on once a global tracer or meter
    provider is set (called when a sandbox is created or a pool started)."""
    global hooks
    if _mode == "auto" and hooks is None and AVAILABLE:
        if not (_unset_tracer(_trace.get_tracer_provider()) and _unset_meter(_metrics.get_meter_provider())):
            hooks = Telemetry(None, None)
    return hooks


# ---- outcomes ------------------------------------------------------------------------------


def outcome_of(exc: BaseException | None) -> str:
    """The ``aionub.outcome`` of a call, run or command that raised ``exc``."""
    if exc is None:
        return "ok"
    if isinstance(exc, CpuTimeout):
        return "cpu_timeout"
    if isinstance(exc, CallTimeout):
        return "timeout"
    if isinstance(exc, ExecutionCancelled):
        return "killed"
    if isinstance(exc, anyio.get_cancelled_exc_class()):
        return "cancelled"
    if isinstance(exc, GuestFault):
        return "fault"
    if isinstance(exc, GuestAborted):
        return "aborted"
    if isinstance(exc, GuestProtocolError):
        return "protocol_error"
    if isinstance(exc, HostFunctionError):
        return "host_function_error"
    if isinstance(exc, SandboxPoisoned):
        return "poisoned"
    if isinstance(exc, SandboxClosed):
        return "closed"
    if isinstance(exc, GuestFunctionNotFound):
        return "not_found"
    if isinstance(exc, InvalidGuest):
        return "invalid_guest"
    if isinstance(exc, VmError):
        return "vm_error"
    if isinstance(exc, TypeError | ValueError):
        return "invalid_arguments"
    return "error"


_KILLS = frozenset(("timeout", "cpu_timeout", "killed", "cancelled"))


def _exception_attributes(exc: BaseException) -> dict[str, Any]:
    if isinstance(exc, GuestFault):
        attrs: dict[str, Any] = {}
        if exc.vector is not None:
            attrs["aionub.fault.vector"] = exc.vector
        if exc.rip is not None:
            attrs["aionub.fault.rip"] = exc.rip
        return attrs
    if isinstance(exc, GuestAborted):
        return {"aionub.abort.code": exc.code}
    return {}


# ---- the instrumentation ----------------------------------------------------------------------


def _native_stats(engine: Engine) -> dict[str, int] | None:
    native = engine.native
    return native.stats() if native is not None else None


class Telemetry:
    """The tracer and instruments of one configuration. Objects made while
    it was active keep a reference to it so that an up-down counter's
    decrements reach the instrument its increment did."""

    def __init__(self, tracer_provider: TracerProvider | None, meter_provider: MeterProvider | None) -> None:
        from . import __version__

        self.tracer = _trace.get_tracer(NAME, __version__, tracer_provider=tracer_provider)
        meter = _metrics.get_meter(NAME, __version__, meter_provider=meter_provider)
        self.calls = meter.create_counter(
            "aionub.calls", unit="{call}", description="Guest calls and runs, by kind, function and outcome")
        self.duration = meter.create_histogram(
            "aionub.call.duration", unit="s", description="Duration of guest calls and runs")
        self.kills = meter.create_counter(
            "aionub.kills", unit="{call}",
            description="Calls and runs the host stopped (timeout, cancellation, interrupt handle)")
        self.stale_kicks = meter.create_counter(
            "aionub.stale_kicks", unit="{kick}", description="Kicks that arrived after the guest had stopped")
        self.host_calls = meter.create_counter(
            "aionub.host_calls", unit="{call}", description="Host-function calls made by guests, by outcome")
        self.sandboxes = meter.create_up_down_counter(
            "aionub.sandboxes", unit="{sandbox}", description="Sandboxes alive (created, not yet closed)")
        self.pool_size = meter.create_up_down_counter(
            "aionub.pool.size", unit="{sandbox}", description="Sandboxes of a pool, idle or in use")
        self.pool_in_use = meter.create_up_down_counter(
            "aionub.pool.in_use", unit="{sandbox}", description="Sandboxes of a pool handed out")
        self.acquire_wait = meter.create_histogram(
            "aionub.pool.acquire.duration", unit="s", description="Time to acquire a sandbox from a pool")

    # ---- spans around commands ----------------------------------------------------------

    def _span(self, name: str, attributes: dict[str, Any]) -> Any:
        return self.tracer.start_as_current_span(
            name, attributes=attributes, record_exception=False, set_status_on_exception=False
        )

    @staticmethod
    def _fail(span: Span, exc: BaseException, outcome: str) -> None:
        span.set_attribute("aionub.outcome", outcome)
        for key, value in _exception_attributes(exc).items():
            span.set_attribute(key, value)
        if isinstance(exc, Exception):
            span.record_exception(exc)
        span.set_status(_Status(_StatusCode.ERROR, f"{type(exc).__name__}: {exc}"))

    @staticmethod
    def guest_attributes(engine: Engine, sandbox_id: int) -> dict[str, Any]:
        return {
            "aionub.guest": engine.label,
            "aionub.guest.sha256": engine.image_sha256,
            "aionub.sandbox.id": sandbox_id,
        }

    async def command(
        self, kind: str, engine: Engine, sandbox_id: int, what: str, timeout: float | None,
        body: Coroutine[Any, Any, T],
    ) -> T:
        """A call (kind "call", ``what`` the function) or run ("run", argv[0]):
        its span, and the call metrics."""
        attributes = self.guest_attributes(engine, sandbox_id)
        what = what if isinstance(what, str) else repr(what)
        attributes["aionub.function" if kind == "call" else "aionub.program"] = what
        if isinstance(timeout, int | float) and not isinstance(timeout, bool):
            attributes["aionub.timeout"] = timeout
        before = _native_stats(engine)
        host_calls = engine.services.host_calls
        metric = {"aionub.kind": kind, "aionub.function": what}
        started = time.perf_counter()
        with self._span(f"aionub.{kind}", attributes) as span:
            exc: BaseException | None = None
            try:
                result = await body
                return result
            except BaseException as error:
                exc = error
                raise
            finally:
                elapsed = time.perf_counter() - started
                outcome = outcome_of(exc)
                after = _native_stats(engine)
                kicks = stale = 0
                if before is not None and after is not None:
                    kicks = after["signals_sent"] - before["signals_sent"]
                    stale = after["stale_kicks"] - before["stale_kicks"]
                span.set_attribute("aionub.kicks", kicks)
                span.set_attribute("aionub.host_calls", engine.services.host_calls - host_calls)
                if exc is None:
                    span.set_attribute("aionub.outcome", outcome)
                    code = getattr(result, "returncode", None)
                    if code is not None:
                        span.set_attribute("aionub.exit_code", code)
                else:
                    self._fail(span, exc, outcome)
                metric["aionub.outcome"] = outcome
                self.calls.add(1, metric)
                self.duration.record(elapsed, metric)
                if outcome in _KILLS:
                    self.kills.add(1, {"aionub.kind": kind, "aionub.outcome": outcome})
                self.stale_kicks.add(stale)  # also 0: the series exists from the first call

    async def simple(self, name: str, attributes: dict[str, Any], body: Coroutine[Any, Any, T]) -> T:
        """A span around a command with no metrics of its own (snapshot, restore)."""
        with self._span(name, attributes) as span:
            try:
                result = await body
            except BaseException as exc:
                self._fail(span, exc, outcome_of(exc))
                raise
            span.set_attribute("aionub.outcome", "ok")
            return result

    @contextmanager
    def create_span(self, label: str) -> Iterator[Span]:
        with self._span("aionub.create", {"aionub.guest": label}) as span:
            try:
                yield span
            except BaseException as exc:
                self._fail(span, exc, outcome_of(exc))
                raise
            span.set_attribute("aionub.outcome", "ok")

    @contextmanager
    def host_call(self, name: str) -> Iterator[Callable[[BaseException | None], None]]:
        """A span around one host-function call; the caller reports the
        error it turned into a reply through the function yielded."""
        with self._span("aionub.host_call", {"aionub.host_function": name}) as span:
            outcome = ["ok"]

            def failed(exc: BaseException | None) -> None:
                if exc is not None:
                    cause = exc.__cause__ if exc.__cause__ is not None else exc
                    outcome[0] = "error"
                    self._fail(span, cause, "error")

            try:
                yield failed
            except BaseException as exc:
                outcome[0] = outcome_of(exc)
                self._fail(span, exc, outcome[0])
                raise
            finally:
                if outcome[0] == "ok":
                    span.set_attribute("aionub.outcome", "ok")
                self.host_calls.add(1, {"aionub.host_function": name, "aionub.outcome": outcome[0]})

    # ---- pools --------------------------------------------------------------------------------

    async def acquire(self, label: str, body: Coroutine[Any, Any, T]) -> T:
        started = time.perf_counter()
        outcome = "ok"
        try:
            with self._span("aionub.pool.acquire", {"aionub.pool": label}) as span:
                try:
                    return await body
                except BaseException as exc:
                    outcome = "timeout" if isinstance(exc, TimeoutError) else outcome_of(exc)
                    self._fail(span, exc, outcome)
                    raise
                finally:
                    if outcome == "ok":
                        span.set_attribute("aionub.outcome", "ok")
        finally:
            self.acquire_wait.record(time.perf_counter() - started, {"aionub.pool": label, "aionub.outcome": outcome})
