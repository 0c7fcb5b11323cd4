"""The Sandbox: one micro-VM running one guest, driven from async code."""

from __future__ import annotations

import asyncio
import inspect
import itertools
import logging
import math
import os
import threading
import warnings
from collections.abc import Callable, Coroutine, Generator, Mapping
from pathlib import Path
from types import TracebackType
from typing import Any

import anyio
import anyio.lowlevel

from . import _abi, _native
from ._binding import AnyioBinding, AsyncioBinding, Binding
from ._config import SandboxConfig
from ._errors import event_error
from ._exceptions import (
    CallTimeout,
    GuestFunctionNotFound,
    GuestProtocolError,
    HostFunctionError,
    InvalidGuest,
    SandboxClosed,
    SandboxError,
    SandboxPoisoned,
)
from ._interrupt import InterruptHandle
from ._native import (
    CMD_CALL,
    CMD_RESUME,
    EV_HOSTCALL,
    EV_LOG,
    EV_READY,
    EV_RESULT,
    NativeSandbox,
    lib,
)
from ._snapshot import Snapshot
from ._wire import GuestFunction, Reader, decode_args, decode_function_table, encode_call, encode_value

__all__ = ("Sandbox",)

log = logging.getLogger("aionub")
guest_log = logging.getLogger("aionub.guest")

HostFunction = Callable[..., Any]
_ids = itertools.count(1)
_LOG_LEVELS = frozenset((10, 20, 30, 40, 50))

# Sandboxes belong to the process that created them: a forked child has the
# memory but not the vCPU threads. Bumped in the child after every fork.
_fork_generation = 0


def _after_fork_in_child() -> None:
    global _fork_generation
    _fork_generation += 1


os.register_at_fork(after_in_child=_after_fork_in_child)


def _read_guest(guest: object) -> tuple[bytes, str]:
    if isinstance(guest, bytes | bytearray | memoryview):
        return bytes(guest), "<bytes>"
    if isinstance(guest, str | os.PathLike):
        path = Path(guest)
        try:
            return path.read_bytes(), str(path)
        except IsADirectoryError:
            raise InvalidGuest(f"guest {str(path)!r} is a directory, not an ELF file") from None
    raise TypeError(f"guest must be a path or the bytes of an ELF file, not {type(guest).__name__}")


def _check_host_functions(host_functions: object) -> dict[str, HostFunction]:
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


async def _checkpoint_if_cancelled() -> None:
    """Deliver a pending cancellation now (cheap when there is none)."""
    if asyncio._get_running_loop() is not None:
        task = asyncio.current_task()
        if task is not None and task.cancelling():
            await asyncio.sleep(0)
    else:
        await anyio.lowlevel.checkpoint_if_cancelled()


def _check_timeout(timeout: object) -> float | None:
    if timeout is None:
        return None
    if not isinstance(timeout, int | float) or isinstance(timeout, bool):
        raise TypeError(f"timeout must be a number of seconds or None, not {type(timeout).__name__}")
    if math.isnan(timeout) or timeout < 0:
        raise ValueError(f"timeout must be a non-negative number of seconds, got {timeout}")
    return float(timeout)


class _Creation(Coroutine[Any, Any, "Sandbox"]):
    """What ``Sandbox.create()`` returns: a coroutine (await it, or hand it to
    ``asyncio.run`` / ``create_task``) that is also an async context manager
    closing the sandbox on exit. The underlying coroutine starts lazily, so
    using only ``async with`` leaves no never-awaited coroutine behind."""

    __slots__ = ("_factory", "_coro", "_sandbox")

    def __init__(self, factory: Callable[[], Coroutine[Any, Any, Sandbox]]) -> None:
        self._factory = factory
        self._coro: Coroutine[Any, Any, Sandbox] | None = None
        self._sandbox: Sandbox | None = None

    def _inner(self) -> Coroutine[Any, Any, Sandbox]:
        if self._coro is None:
            self._coro = self._factory()
        return self._coro

    def __await__(self) -> Generator[Any, None, Sandbox]:
        return self._inner().__await__()

    def send(self, value: Any) -> Any:
        return self._inner().send(value)

    def throw(self, *args: Any) -> Any:
        return self._inner().throw(*args)

    def close(self) -> None:
        if self._coro is not None:
            self._coro.close()

    async def __aenter__(self) -> Sandbox:
        if self._coro is not None:
            raise RuntimeError("Sandbox.create() was already awaited; use 'async with' on the sandbox")
        self._sandbox = await self._factory()
        return self._sandbox

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if self._sandbox is not None:
            await self._sandbox.aclose()


class Sandbox:
    """A KVM micro-VM running one guest. Create with :meth:`create`.

    Calls on one sandbox run one at a time, in the order they were made;
    use several sandboxes for parallelism.
    """

    def __init__(
        self,
        native: NativeSandbox,
        config: SandboxConfig,
        host_functions: dict[str, HostFunction],
        label: str,
    ) -> None:
        self._native: NativeSandbox | None = native
        self._config = config
        self._host_functions = host_functions
        self._label = label
        self.id = next(_ids)
        self._ih = native.interrupt()
        self._generation = _fork_generation
        self._functions: dict[str, GuestFunction] = {}
        self._prefixes: dict[str, bytes] = {}
        self._binding: Binding | None = None
        self._poison: str | None = None
        self._closing = False
        self._closed = False
        self._asyncio_lock: asyncio.Lock | None = None
        self._anyio_lock: anyio.Lock | None = None
        self._busy = False
        # High-water marks of the host's writes into the buffers since the
        # last snapshot/restore (KVM's dirty log does not see them).
        self._input_used = 0
        self._output_used = 0
        # Per-call state, reset at the start of every call.
        self._host_error: HostFunctionError | None = None
        self._deadline: float | None = None  # loop time at which the call times out
        self._log_budget = 0
        self._log_dropped = False
        # While an async host function runs: its cancel scope and the thread
        # of its event loop, so that aclose() can stop it.
        self._host_call_scope: tuple[anyio.CancelScope, int] | None = None

    # ---- creation ---------------------------------------------------------

    @classmethod
    def create(
        cls,
        guest: str | os.PathLike[str] | bytes,
        *,
        host_functions: Mapping[str, HostFunction] | None = None,
        **config: Any,
    ) -> _Creation:
        """Create a sandbox running ``guest`` (a path or the bytes of a guest
        ELF). ``host_functions`` maps names the guest may call to callables,
        sync or ``async def``. ``config`` takes the fields of
        :class:`SandboxConfig`.

        Await the result, or use it with ``async with`` to close the sandbox
        on exit. Raises :class:`KvmUnavailable`, :class:`InvalidGuest`,
        ``TypeError``/``ValueError`` for bad options."""
        options = SandboxConfig.from_kwargs(config)
        functions = _check_host_functions(host_functions)
        image, label = _read_guest(guest)

        async def factory() -> Sandbox:
            native = NativeSandbox(options.to_native(), image)
            sandbox = cls(native, options, functions, label)
            try:
                await sandbox._boot()
            except BaseException:
                sandbox._destroy()
                raise
            log.debug("created %r", sandbox)
            return sandbox

        return _Creation(factory)

    async def _boot(self) -> None:
        self._log_budget = self._config.max_log_bytes
        binding = self._bind()
        binding.start()
        try:
            with anyio.fail_after(self._config.init_timeout):
                kind = await self._drive(binding, "initialisation")
        except TimeoutError:
            raise InvalidGuest(
                f"guest {self._label} did not become ready within {self._config.init_timeout} s"
            ) from None
        except SandboxError as exc:
            if isinstance(exc, InvalidGuest):
                raise
            raise InvalidGuest(f"guest {self._label} failed during initialisation: {exc}") from exc
        if kind != EV_READY:
            raise InvalidGuest(f"guest {self._label} returned a result before it was ready")
        native = self._native
        assert native is not None
        try:
            self._functions = decode_function_table(native.output, native.event.length)
        except GuestProtocolError as exc:
            raise InvalidGuest(f"guest {self._label}: {exc}") from None
        self._prefixes = {name: fn.prefix() for name, fn in self._functions.items()}
        self._poison = None

    # ---- public API ---------------------------------------------------------

    @property
    def functions(self) -> Mapping[str, GuestFunction]:
        """The guest's exported functions with their signatures."""
        return dict(self._functions)

    @property
    def poisoned(self) -> bool:
        """True once a call did not run to completion (timeout, kill,
        cancellation, fault, abort): every later call raises
        :class:`SandboxPoisoned`."""
        return self._poison is not None

    @property
    def closed(self) -> bool:
        return self._closed or self._closing

    def interrupt_handle(self) -> InterruptHandle:
        """A handle that any thread can use to stop the running call."""
        self._check_open()
        return InterruptHandle(self._ih)

    def stats(self) -> dict[str, int]:
        """Counters of this sandbox: calls, runs (KVM_RUN ioctls),
        cancellations, signals_sent, stale_kicks, handler_reinstalls."""
        self._check_open()
        assert self._native is not None
        return self._native.stats()

    def __repr__(self) -> str:
        if self._closed:
            state = "closed"
        elif self._poison is not None:
            state = "poisoned"
        elif self._busy:
            state = "busy"
        else:
            state = "ready"
        return f"<Sandbox {self.id} {self._label} [{state}]>"

    async def call(self, name: str, /, *args: Any, timeout: float | None = None) -> Any:
        """Call the guest function ``name`` with ``args`` (int, float, bool,
        str, bytes, None) and return its result.

        ``timeout`` (seconds) stops the guest when it expires and raises
        :class:`CallTimeout`. A cancelled task stops the guest too. In both
        cases the vCPU has stopped before the exception reaches the caller,
        and the sandbox is poisoned."""
        self._check_usable()
        fn = self._functions.get(name) if isinstance(name, str) else None
        if fn is None:
            if not isinstance(name, str):
                raise TypeError(f"function name must be a str, not {type(name).__name__}")
            raise GuestFunctionNotFound(f"guest {self._label} exports no function named {name!r}")
        request = encode_call(fn, self._prefixes[name], args)
        if len(request) > self._config.input_size:
            raise ValueError(
                f"the arguments of {name}() take {len(request)} bytes, more than the "
                f"{self._config.input_size}-byte input buffer (option input_size)"
            )
        deadline = _check_timeout(timeout)
        loop = asyncio._get_running_loop()
        if loop is not None:
            lock = self._asyncio_lock
            if lock is None:
                lock = self._asyncio_lock = asyncio.Lock()
            await lock.acquire()  # no yield when free
            try:
                if deadline is None:
                    self._deadline = None
                    return await self._call_locked(fn, request)
                self._deadline = loop.time() + deadline
                cm = asyncio.timeout(deadline)
                try:
                    async with cm:
                        return await self._call_locked(fn, request)
                except TimeoutError:
                    if cm.expired():
                        raise self._timed_out(name, deadline) from None
                    raise
            finally:
                lock.release()
        # Not asyncio: trio (or another anyio backend).
        async with self._lock():
            if deadline is None:
                self._deadline = None
                return await self._call_locked(fn, request)
            self._deadline = anyio.current_time() + deadline
            with anyio.move_on_after(deadline) as scope:
                return await self._call_locked(fn, request)
            if scope.cancelled_caught:
                raise self._timed_out(name, deadline)
            raise AssertionError("unreachable: the call neither returned nor timed out")

    async def snapshot(self) -> Snapshot:
        """Capture guest memory and all vCPU state. Refused (SandboxPoisoned)
        for a poisoned sandbox: its state is unknown. Waits for a call in
        progress to finish."""
        self._check_usable()
        async with self._lock():
            self._check_usable()
            native = self._native
            assert native is not None
            await self._command(lib.ab_sandbox_submit_snapshot, self._input_used, self._output_used)
            snapshot = Snapshot(native.take_snapshot_result(), self._label)
            self._input_used = self._output_used = 0
        log.debug("%r: snapshot of %d KiB", self, snapshot.nbytes // 1024)
        return snapshot

    async def restore(self, snapshot: Snapshot) -> None:
        """Bring guest memory and vCPU state back to ``snapshot`` and clear
        poisoning: the only way out of it. The snapshot must come from a
        sandbox of the same guest image and memory options (else
        ValueError). Copies back only the pages written since, when the
        snapshot was the last one taken or restored here."""
        if not isinstance(snapshot, Snapshot):
            raise TypeError(f"restore() needs a Snapshot, not {type(snapshot).__name__}")
        self._check_open()
        async with self._lock():
            self._check_open()
            native = self._native
            assert native is not None
            await self._command(
                lib.ab_sandbox_submit_restore, snapshot._ptr, self._input_used, self._output_used
            )
            native.check_restored()
            self._input_used = self._output_used = 0
            self._poison = None
        log.debug("%r: restored to a snapshot of %d KiB", self, snapshot.nbytes // 1024)

    async def _command(self, submit: Any, *args: Any) -> int:
        """Run a non-call command on the vCPU thread and wait for its event.
        It never enters the guest, so waiting it out on cancellation is
        brief; the cancellation is re-raised afterwards."""
        binding = self._bind()
        binding.submit_with(submit, *args)
        try:
            return await binding.wait()
        except BaseException:
            await binding.stop(self._ih, self._config.interrupt_retry_delay)
            raise

    def _lock(self) -> asyncio.Lock | anyio.Lock:
        """The lock that serialises calls, for the running event loop."""
        if asyncio._get_running_loop() is not None:
            if self._asyncio_lock is None:
                self._asyncio_lock = asyncio.Lock()
            return self._asyncio_lock
        if self._anyio_lock is None:
            self._anyio_lock = anyio.Lock()
        return self._anyio_lock

    async def aclose(self) -> None:
        """Close the sandbox: a call in flight is killed (it raises
        :class:`SandboxClosed`), queued calls raise SandboxClosed, the vCPU
        thread exits and every resource is released. Idempotent."""
        if self._generation != _fork_generation and not self._closed:
            self._release_fork_copy()
            return
        if self._closed or self._closing:
            while not self._closed:
                await anyio.sleep(self._config.interrupt_retry_delay)
            return
        self._closing = True
        try:
            # Kill a call in flight; the call reports SandboxClosed. Re-kick
            # from the loop until it has finished (never block the loop).
            while self._busy:
                _native.lib.ab_interrupt_cancel(self._ih)
                # The guest may be waiting for an async host function rather
                # than running: cancel that too (from its own loop's thread).
                host_call = self._host_call_scope
                if host_call is not None and host_call[1] == threading.get_ident():
                    host_call[0].cancel()
                await anyio.sleep(self._config.interrupt_retry_delay)
        finally:
            with anyio.CancelScope(shield=True):
                await self._teardown()
        log.debug("closed %r", self)

    async def __aenter__(self) -> Sandbox:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()

    # ---- the call engine ------------------------------------------------------

    def _check_open(self) -> None:
        if self._closed or self._closing:
            raise SandboxClosed(f"sandbox {self.id} is closed")
        if self._generation != _fork_generation:
            raise SandboxError(
                f"sandbox {self.id} belongs to the parent process; a forked child must create its own"
            )

    def _check_usable(self) -> None:
        self._check_open()
        if self._poison is not None:
            raise SandboxPoisoned(f"sandbox {self.id} is poisoned: {self._poison}")

    def _set_poison(self, reason: str) -> None:
        self._poison = reason
        log.debug("%r poisoned: %s", self, reason)

    def _timed_out(self, name: str, timeout: float) -> CallTimeout:
        if self._poison is not None:  # not if the guest finished as the deadline hit
            self._poison = f"a call to {name}() timed out after {timeout} s"
        return CallTimeout(f"{name}() did not finish within {timeout:g} s; the guest was stopped")

    def _bind(self) -> Binding:
        """The binding for the event loop we are running on."""
        loop = asyncio._get_running_loop()
        binding = self._binding
        if binding is not None and binding.loop is loop:
            return binding
        native = self._native
        assert native is not None
        new: Binding = AsyncioBinding(loop, native.ptr) if loop is not None else AnyioBinding(native.ptr)
        if binding is not None:
            binding.close()
        self._binding = new
        return new

    async def _call_locked(self, fn: GuestFunction, request: bytes) -> Any:
        self._check_usable()  # again: the state may have changed while queued
        native = self._native
        assert native is not None
        binding = self._binding
        if binding is None or binding.loop is not asyncio._get_running_loop():
            binding = self._bind()
        native.input[: len(request)] = request
        if len(request) > self._input_used:
            self._input_used = len(request)
        self._host_error = None
        self._log_budget = self._config.max_log_bytes
        self._log_dropped = False
        self._busy = True
        try:
            binding.submit(CMD_CALL)
            kind = await self._drive(binding, f"{fn.name}()")
        finally:
            self._busy = False
        if kind != EV_RESULT:
            # _drive() also returns on READY, which only creation expects: a
            # guest that signals READY again mid-call broke the protocol (its
            # output buffer must not be read as this call's result).
            self._set_poison(f"{fn.name}() signalled READY instead of returning a result")
            raise GuestProtocolError(f"the guest signalled READY during a call to {fn.name}()")
        return self._result(fn)

    async def _drive(self, binding: Binding, what: str) -> int:
        """Run the guest until it returns (RESULT or READY), serving log
        records and host calls on the way. Anything else, and any exception
        or cancellation while the guest is mid-call, poisons the sandbox;
        the vCPU is stopped before the exception propagates."""
        in_flight = True
        try:
            while True:
                kind = await binding.wait()
                in_flight = False
                if kind == EV_RESULT or kind == EV_READY:
                    return kind
                if kind == EV_LOG:
                    self._emit_log()
                elif kind == EV_HOSTCALL:
                    if not self._busy:
                        # Host functions serve calls (docs/abi.md); a guest
                        # asking for one while it starts up is not in one.
                        raise GuestProtocolError(f"the guest called a host function during {what}")
                    await self._serve_host_call()
                    # A deadline that passed, or a cancellation that arrived,
                    # while a sync host function blocked the loop takes
                    # effect here: the guest is never resumed after it.
                    if self._deadline is not None and anyio.current_time() >= self._deadline:
                        raise CallTimeout(f"{what} did not finish within its timeout; the guest was stopped")
                    await _checkpoint_if_cancelled()
                else:
                    raise self._event_error(kind)
                if self._closing:
                    raise SandboxClosed(f"sandbox {self.id} was closed during {what}")
                binding.submit(CMD_RESUME)
                in_flight = True
        except BaseException as exc:
            if in_flight and await binding.stop(self._ih, self._config.interrupt_retry_delay) == EV_RESULT:
                raise  # the guest finished the call before the kill landed: its state is intact
            if self._poison is None:
                self._set_poison(f"{what} did not run to completion ({type(exc).__name__}: {exc})")
            raise

    def _event_error(self, kind: int) -> SandboxError:
        native = self._native
        assert native is not None
        if self._closing and kind == _native.EV_CANCELLED:
            return SandboxClosed(f"sandbox {self.id} was closed while a call was running")
        return event_error(kind, native.event, native.output, native.layout)

    def _result(self, fn: GuestFunction) -> Any:
        native = self._native
        assert native is not None
        out = native.output
        length = native.event.length
        # Fast path: status OK with a None value, from a function declared
        # to return None.
        if length == 2 and out[0] == 0 and out[1] == 0 and fn.returns == _abi.TAG_NONE:
            value = None
        else:
            value = self._decode_result(fn, out, length)
        if self._host_error is not None:
            raise self._host_error
        if self._log_dropped:
            guest_log.warning("[sandbox %d] guest log output over %d bytes in one call was dropped",
                              self.id, self._config.max_log_bytes)
        return value

    def _decode_result(self, fn: GuestFunction, out: memoryview, length: int) -> Any:
        try:
            r = Reader(out, length, f"result of {fn.name}()")
            status = r.u8()
            if status == _abi.STATUS_OK:
                # The value must carry the declared return type: the guest
                # would otherwise hand the caller, say, a str from a function
                # whose signature promises an int.
                if r.pos < r.end and out[r.pos] != fn.returns:
                    raise r.fail(
                        f"{fn.name}() is declared to return {_abi.TYPE_NAMES[fn.returns]} "
                        f"but returned a value with type tag {out[r.pos]}"
                    )
                value = r.value()
                r.done()
                return value
            message = r.text()
            r.done()
        except GuestProtocolError as exc:
            self._set_poison(str(exc))
            raise
        if status == _abi.STATUS_NOT_FOUND:
            # The host only calls names from the guest's own function table,
            # so "not found" contradicts what the guest declared: a lie.
            self._set_poison(f"{fn.name}() was reported missing by a guest that exports it")
            raise GuestProtocolError(
                f"guest {self._label} exports {fn.name}() but answered that it has no function named {message!r}"
            )
        if status == _abi.STATUS_BAD_ARGS:
            raise TypeError(f"guest rejected the arguments of {fn.name}(): {message}")
        self._set_poison(f"{fn.name}() returned unknown status {status}")
        raise GuestProtocolError(f"result of {fn.name}() has unknown status {status}")

    def _emit_log(self) -> None:
        native = self._native
        assert native is not None
        length = native.event.length
        r = Reader(native.output, length, "log record")
        level = r.u8()
        if level not in _LOG_LEVELS:
            raise r.fail(f"unknown log level {level}")
        message = r.text()
        r.done()
        self._log_budget -= length
        if self._log_budget < 0:
            self._log_dropped = True
            return
        guest_log.log(level, "[sandbox %d] %s", self.id, message, extra={"sandbox_id": self.id})

    async def _serve_host_call(self) -> None:
        native = self._native
        assert native is not None
        r = Reader(native.output, native.event.length, "host-call request")
        name = r.text()
        args = decode_args(r)
        r.done()
        error: HostFunctionError | None = None
        reply = b""
        func = self._host_functions.get(name)
        closed_meanwhile = False
        if func is None:
            error = HostFunctionError(f"the guest called host function {name!r}, which does not exist")
        else:
            try:
                result = func(*args)
                if inspect.isawaitable(result):
                    with anyio.CancelScope() as scope:  # aclose() cancels it
                        self._host_call_scope = (scope, threading.get_ident())
                        try:
                            result = await result
                        finally:
                            self._host_call_scope = None
                    closed_meanwhile = scope.cancelled_caught
                if not closed_meanwhile:
                    reply = b"\x00" + encode_value(result, f"the result of host function {name!r}")
            except Exception as exc:
                error = HostFunctionError(f"host function {name!r} failed: {type(exc).__name__}: {exc}")
                error.__cause__ = exc
        if closed_meanwhile:
            raise SandboxClosed(f"sandbox {self.id} was closed while host function {name!r} was running")
        if error is None and len(reply) > self._config.output_size:
            error = HostFunctionError(
                f"the result of host function {name!r} takes {len(reply)} bytes, more than "
                f"the {self._config.output_size}-byte output buffer (option output_size)"
            )
        if error is not None:
            if self._host_error is None:
                self._host_error = error
            message = str(error).encode()[: self._config.output_size - 6]
            reply = b"\x01" + len(message).to_bytes(4, "little") + message + b"\x00"
        native.output[: len(reply)] = reply
        if len(reply) > self._output_used:
            self._output_used = len(reply)

    def _release_fork_copy(self) -> None:
        """Close a forked child's copy of a parent's sandbox. The vCPU
        thread, any call it is running and the event loop's registration of
        the eventfd all belong to the parent: waiting for that call would
        never end, and unregistering the eventfd from the epoll instance
        (which parent and child share) would leave the parent's sandbox
        waiting forever. So only this process's mappings and descriptors
        are dropped."""
        native, self._native = self._native, None
        if native is not None:
            native.destroy()  # ab_sandbox_destroy() unmaps only, in a child
        binding, self._binding = self._binding, None
        if binding is not None:
            os.close(binding.fd)
        self._closed = True
        self._closing = False

    async def _teardown(self) -> None:
        """Release everything without blocking the event loop: the vCPU
        thread tears its VM down (about half a millisecond here) while the
        loop waits for its event; joining the exited thread is then
        immediate. Falls back to a blocking release if that cannot start."""
        native = self._native
        if native is not None:
            current = self._bind()
            self._native = None
            ptr = native.detach()  # no view of guest memory may outlive it
            try:
                current.submit_with(lib.ab_sandbox_submit_teardown)
                await current.wait()
            except OSError:
                pass  # could not start (a command in flight): the release below does it all
            _native.ffi.release(ptr)
        binding, self._binding = self._binding, None
        if binding is not None:
            binding.close()
        self._closed = True
        self._closing = False

    def _destroy(self) -> None:
        """Release everything now (the vCPU thread is joined)."""
        native, self._native = self._native, None
        if native is not None:
            native.destroy()
        binding, self._binding = self._binding, None
        if binding is not None:
            binding.close()
        self._closed = True
        self._closing = False

    def __del__(self) -> None:
        if getattr(self, "_closed", True) or getattr(self, "_native", None) is None:
            return
        if self._generation != _fork_generation:
            return
        warnings.warn(f"unclosed {self!r}; use 'async with' or 'await sandbox.aclose()'",
                      ResourceWarning, stacklevel=1)
        try:
            self._destroy()
        except Exception:
            pass
