"""What the host does for a guest in the middle of a call: log records,
host-function calls and (through ``_syscalls``) system requests. Everything
here reads records the guest wrote, so everything is validated
(``_wire.Reader``) before use."""

from __future__ import annotations

import inspect
import logging
import threading
from collections.abc import Callable, Mapping
from typing import Any

import anyio

from . import _abi, _telemetry
from ._exceptions import HostFunctionError, SandboxClosed
from ._syscalls import FileProvider, RunIO, SystemServices
from ._wire import Reader, decode_args, encode_value

__all__ = ("HostFunction", "GuestServices", "check_host_functions")

guest_log = logging.getLogger("aionub.guest")

HostFunction = Callable[..., Any]
_LOG_LEVELS = frozenset((10, 20, 30, 40, 50))


def check_host_functions(host_functions: object) -> dict[str, HostFunction]:
    if host_functions is None:
        return {}
    if not isinstance(host_functions, Mapping):
        raise TypeError(
            f"host_functions must be a mapping of names to callables, not {type(host_functions).__name__}"
        )
    checked: dict[str, HostFunction] = {}
    for name, func in host_functions.items():
        if not isinstance(name, str) or not name:
            raise TypeError(f"host function names must be non-empty strings, got {name!r}")
        if len(name.encode()) > _abi.MAX_NAME:
            raise ValueError(f"host function name {name[:40]!r}... is longer than {_abi.MAX_NAME} bytes")
        if not callable(func):
            raise TypeError(f"host function {name!r} is not callable: {func!r}")
        checked[name] = func
    return checked


class GuestServices:
    """Serves one sandbox's log records and host calls. Per-call state
    (log budget, the first host-function error) is reset by ``begin_call``."""

    __slots__ = (
        "host_functions", "sandbox_id", "output_size", "max_log_bytes",
        "host_error", "log_budget", "log_dropped", "output_used", "host_call_scope", "sys", "host_calls",
    )

    def __init__(
        self,
        host_functions: dict[str, HostFunction],
        sandbox_id: int,
        output_size: int,
        max_log_bytes: int,
        files: FileProvider | None = None,
    ) -> None:
        self.host_functions = host_functions
        self.sandbox_id = sandbox_id
        self.output_size = output_size
        self.max_log_bytes = max_log_bytes
        self.host_error: HostFunctionError | None = None
        self.log_budget = max_log_bytes
        self.log_dropped = False
        # High-water mark of the host's replies in the output buffer since
        # the last snapshot/restore (KVM's dirty log does not see them).
        self.output_used = 0
        # While an async host function runs: its cancel scope and the thread
        # of its event loop, so that aclose() can stop it.
        self.host_call_scope: tuple[anyio.CancelScope, int] | None = None
        self.sys = SystemServices(self, files)
        self.host_calls = 0  # host-function calls served (telemetry reads the difference)

    def begin_call(self, run: RunIO | None = None) -> None:
        """A call (or, with ``run``, a run) starts."""
        self.host_error = None
        self.log_budget = self.max_log_bytes
        self.log_dropped = False
        self.sys.begin(run)

    def finish_call(self) -> None:
        """A call ended, however: log the output lines it left unfinished."""
        self.sys.flush()

    def end_call(self) -> None:
        """After a result: raise the first host-function error of the call,
        and warn about dropped log output."""
        if self.log_dropped:
            guest_log.warning("[sandbox %d] guest log output over %d bytes in one call was dropped",
                              self.sandbox_id, self.max_log_bytes)
        if self.host_error is not None:
            raise self.host_error

    def cancel_host_call(self) -> None:
        """Stop an async host function that is running on this thread's loop."""
        host_call = self.host_call_scope
        if host_call is not None and host_call[1] == threading.get_ident():
            host_call[0].cancel()

    # ---- log records ---------------------------------------------------------------------

    def emit_log(self, output: memoryview, length: int) -> None:
        r = Reader(output, length, "log record")
        level = r.u8()
        if level not in _LOG_LEVELS:
            raise r.fail(f"unknown log level {level}")
        message = r.text()
        r.done()
        self.log_budget -= length
        if self.log_budget < 0:
            self.log_dropped = True
            return
        guest_log.log(level, "[sandbox %d] %s", self.sandbox_id, message, extra={"sandbox_id": self.sandbox_id})

    # ---- host calls ------------------------------------------------------------------------

    async def serve_host_call(self, output: memoryview, length: int) -> None:
        """Run the host function the guest asked for and write the reply
        into the output buffer. Raises GuestProtocolError for a malformed
        request, SandboxClosed if aclose() stopped an async host function."""
        r = Reader(output, length, "host-call request")
        name = r.text()
        args = decode_args(r)
        r.done()
        self.host_calls += 1
        tel = _telemetry.hooks
        if tel is None:
            await self._serve(output, name, args)
        else:
            with tel.host_call(name) as report:
                report(await self._serve(output, name, args))

    async def _serve(self, output: memoryview, name: str, args: list[Any]) -> HostFunctionError | None:
        """Run host function ``name``, write the reply; the error it reported, if any."""
        error: HostFunctionError | None = None
        reply = b""
        func = self.host_functions.get(name)
        closed_meanwhile = False
        if func is None:
            error = HostFunctionError(f"the guest called host function {name!r}, which does not exist")
        else:
            try:
                result = func(*args)
                if inspect.isawaitable(result):
                    with anyio.CancelScope() as scope:  # aclose() cancels it
                        self.host_call_scope = (scope, threading.get_ident())
                        try:
                            result = await result
                        finally:
                            self.host_call_scope = None
                    closed_meanwhile = scope.cancelled_caught
                if not closed_meanwhile:
                    reply = b"\x00" + encode_value(result, f"the result of host function {name!r}")
            except Exception as exc:
                error = HostFunctionError(f"host function {name!r} failed: {type(exc).__name__}: {exc}")
                error.__cause__ = exc
        if closed_meanwhile:
            raise SandboxClosed(f"sandbox {self.sandbox_id} was closed while host function {name!r} was running")
        if error is None and len(reply) > self.output_size:
            error = HostFunctionError(
                f"the result of host function {name!r} takes {len(reply)} bytes, more than "
                f"the {self.output_size}-byte output buffer (option output_size)"
            )
        if error is not None:
            if self.host_error is None:
                self.host_error = error
            message = str(error).encode()[: self.output_size - 6]
            reply = b"\x01" + len(message).to_bytes(4, "little") + message + b"\x00"
        output[: len(reply)] = reply
        if len(reply) > self.output_used:
            self.output_used = len(reply)
        return error
