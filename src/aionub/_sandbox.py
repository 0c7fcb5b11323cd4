"""The Sandbox: one micro-VM running one guest, driven from async code.

This module is the public face: argument checking and the API. The engine
(``_engine.py``) owns the native sandbox and runs commands; its lifecycle
(``_lifecycle.py``) is the one state machine; host calls and logs live in
``_hostcalls.py`` and ``_syscalls.py``, result decoding in ``_results.py``,
runs of main() in ``_run.py``, and everything that differs between asyncio
and trio in ``_binding.py``.
"""

from __future__ import annotations

import hashlib
import itertools
import logging
import os
import warnings
from collections.abc import Callable, Coroutine, Generator, Mapping, Sequence
from pathlib import Path
from types import TracebackType
from typing import Any, Protocol, TypeVar

from . import _telemetry
from ._config import SandboxConfig
from ._debugserver import start_debug_server, stop_debug_server
from ._engine import Engine, fork_generation, note_core, now
from ._exceptions import CallTimeout, GuestFunctionNotFound, InvalidGuest
from ._hostcalls import HostFunction, check_host_functions
from ._interrupt import InterruptHandle
from ._lifecycle import State
from ._limits import CallLimits, call_limits, check_cpu_timeout, check_seconds
from ._native import NativeSandbox
from ._run import RunResult, check_argv, check_env, check_stdin, encode_run
from ._snapshot import Snapshot
from ._syscalls import FileProvider, check_files
from ._wire import GuestFunction, encode_call

__all__ = ("Sandbox",)

log = logging.getLogger("aionub")

_ids = itertools.count(1)

# Kept importable from here (the pool and tools use them).
_check_host_functions = check_host_functions


def check_name(name: object) -> str | None:
    """A caller's name for a guest (``name=``): what errors and logs call it."""
    if name is None:
        return None
    if not isinstance(name, str):
        raise TypeError(f"name must be a str or None, not {type(name).__name__}")
    if not name or len(name) > 200 or not name.isprintable():
        raise ValueError(f"name must be 1 to 200 printable characters, got {name!r}")
    return name


def read_guest(guest: object, name: str | None = None) -> tuple[bytes, str]:
    """The guest's image and its label: ``name`` if given, else the path,
    else ``bytes:`` and the first 12 hex digits of the image's SHA-256."""
    if isinstance(guest, bytes | bytearray | memoryview):
        image = bytes(guest)
        return image, name or f"bytes:{hashlib.sha256(image).hexdigest()[:12]}"
    if isinstance(guest, str | os.PathLike):
        path = Path(guest)
        try:
            return path.read_bytes(), name or str(path)
        except IsADirectoryError:
            raise InvalidGuest(f"guest {str(path)!r} is a directory, not an ELF file") from None
    raise TypeError(f"guest must be a path or the bytes of an ELF file, not {type(guest).__name__}")


def _program_name(label: str) -> str:
    """argv[0] when the caller gives none: the guest's file name (or name)."""
    return "guest" if label.startswith("bytes:") else os.path.basename(label) or label


class _Closable(Protocol):
    async def aclose(self) -> None: ...


_T = TypeVar("_T", bound=_Closable)


class Creation(Coroutine[Any, Any, _T]):
    """What ``Sandbox.create()`` (and the script sandboxes' ``create()``)
    returns: a coroutine (await it, or hand it to ``asyncio.run`` /
    ``create_task``) that is also an async context manager closing the
    sandbox on exit. The underlying coroutine starts lazily, so using only
    ``async with`` leaves no never-awaited coroutine behind."""

    __slots__ = ("_factory", "_coro", "_sandbox")

    def __init__(self, factory: Callable[[], Coroutine[Any, Any, _T]]) -> None:
        self._factory = factory
        self._coro: Coroutine[Any, Any, _T] | None = None
        self._sandbox: _T | None = None

    def _inner(self) -> Coroutine[Any, Any, _T]:
        if self._coro is None:
            self._coro = self._factory()
        return self._coro

    def __await__(self) -> Generator[Any, None, _T]:
        return self._inner().__await__()

    def send(self, value: Any) -> Any:
        return self._inner().send(value)

    def throw(self, *args: Any) -> Any:
        return self._inner().throw(*args)

    def close(self) -> None:
        if self._coro is not None:
            self._coro.close()

    async def __aenter__(self) -> _T:
        if self._coro is not None:
            raise RuntimeError("create() was already awaited; use 'async with' on the sandbox")
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


async def _traced(label: str, boot: Callable[[], Coroutine[Any, Any, Sandbox]]) -> Sandbox:
    """Run a creation (``boot``) inside its telemetry span, if telemetry is on."""
    tel = _telemetry.refresh()
    if tel is None:
        return await boot()
    with tel.create_span(label) as span:
        sandbox = await boot()
        span.set_attributes(tel.guest_attributes(sandbox._engine, sandbox.id))
        sandbox._engine.counted_by(tel)
        return sandbox


class Sandbox:
    """A KVM micro-VM running one guest. Create with :meth:`create`.

    Calls on one sandbox run one at a time, in the order they were made;
    use several sandboxes for parallelism. Its state (``repr`` shows it) is
    one of idle, busy (a command in flight), poisoned, closing, closed:
    ``docs/cancellation.md`` draws the transitions.
    """

    __slots__ = ("id", "_engine", "_label", "_ih", "_prefixes", "_gdb", "__weakref__")

    def __init__(
        self,
        native: NativeSandbox,
        config: SandboxConfig,
        host_functions: dict[str, HostFunction],
        label: str,
        files: FileProvider | None = None,
    ) -> None:
        self.id = next(_ids)
        self._label = label
        self._engine = Engine(native, config, host_functions, label, self.id, files)
        self._ih = self._engine.ih
        self._prefixes: dict[str, bytes] = {}
        self._gdb: Any = None  # the (server, task) of debug="ADDRESS"

    # ---- creation ---------------------------------------------------------

    @classmethod
    def create(
        cls,
        guest: str | os.PathLike[str] | bytes,
        *,
        host_functions: Mapping[str, HostFunction] | None = None,
        files: Mapping[str, bytes] | None = None,
        name: str | None = None,
        **config: Any,
    ) -> Creation[Sandbox]:
        """Create a sandbox running ``guest`` (a path or the bytes of a guest
        ELF). ``host_functions`` maps names the guest may call to callables,
        sync or ``async def``. ``files`` maps absolute guest paths to the
        contents the guest may read (stat/pread); any Mapping works, looked
        up at each request, and a dict is checked now. ``name`` is what
        errors, logs and ``repr`` call the guest (default: its path, or
        ``bytes:`` and a short SHA-256 of the image). ``config`` takes the
        fields of :class:`SandboxConfig`.

        Await the result, or use it with ``async with`` to close the sandbox
        on exit. Raises :class:`KvmUnavailable`, :class:`InvalidGuest`,
        ``TypeError``/``ValueError`` for bad options."""
        options = SandboxConfig.from_kwargs(config)
        functions = check_host_functions(host_functions)
        provider = check_files(files)
        image, label = read_guest(guest, check_name(name))

        async def boot() -> Sandbox:
            native = NativeSandbox(options.to_native(), image)
            if options.debug:
                native.enable_debug()
            sandbox = cls(native, options, functions, label, provider)
            try:
                await sandbox._engine.boot()
                if isinstance(options.debug, str):
                    sandbox._gdb = await start_debug_server(sandbox, options.debug)
            except BaseException:
                sandbox._engine.release_now()
                raise
            sandbox._prefixes = {name: fn.prefix() for name, fn in sandbox._engine.functions.items()}
            log.debug("created %r", sandbox)
            return sandbox

        return Creation(lambda: _traced(label, boot))

    @classmethod
    def spawn(
        cls,
        snapshot: Snapshot,
        *,
        host_functions: Mapping[str, HostFunction] | None = None,
        files: Mapping[str, bytes] | None = None,
        name: str | None = None,
        **config: Any,
    ) -> Creation[Sandbox]:
        """Create a sandbox that starts in the state of ``snapshot``, without
        running the guest's initialisation: its guest memory is the
        snapshot's, shared copy-on-write with every other sandbox spawned
        from it (a page costs memory only once a sandbox writes it), and its
        vCPU state is the snapshot's. Cheaper than :meth:`create` in time
        and memory; ``snapshot`` may come from any sandbox or from
        :meth:`Snapshot.load`.

        ``host_functions``, ``files`` and ``name`` are as for :meth:`create`
        (``name`` defaults to the snapshot's guest name). ``config`` takes
        the fields of :class:`SandboxConfig`; the memory options default to
        the snapshot's, and others raise ValueError. For a guest with
        ``main()``, every :meth:`run` starts from the snapshot.

        Await the result, or use it with ``async with``."""
        if not isinstance(snapshot, Snapshot):
            raise TypeError(f"spawn() needs a Snapshot, not {type(snapshot).__name__}")
        options = SandboxConfig.from_kwargs({**snapshot.memory_options, **config})
        functions = check_host_functions(host_functions)
        provider = check_files(files)
        label = check_name(name) or snapshot.guest
        ptr, ready = snapshot._ptr, snapshot._ready

        async def boot() -> Sandbox:
            native = NativeSandbox.spawn(options.to_native(), ptr)
            sandbox = cls(native, options, functions, label, provider)
            try:
                await sandbox._engine.boot_spawned(ptr, ready)
            except BaseException:
                sandbox._engine.release_now()
                raise
            sandbox._prefixes = {name: fn.prefix() for name, fn in sandbox._engine.functions.items()}
            log.debug("spawned %r from %r", sandbox, snapshot)
            return sandbox

        return Creation(lambda: _traced(label, boot))

    # ---- public API ---------------------------------------------------------

    @property
    def functions(self) -> Mapping[str, GuestFunction]:
        """The guest's exported functions with their signatures."""
        return dict(self._engine.functions)

    @property
    def poisoned(self) -> bool:
        """True once a call did not run to completion (timeout, kill,
        cancellation, fault, abort): every later call raises
        :class:`SandboxPoisoned` until :meth:`restore`."""
        return self._engine.lifecycle.poison is not None

    @property
    def closed(self) -> bool:
        """True from the moment :meth:`aclose` begins."""
        return self._engine.lifecycle.is_closed

    @property
    def _native(self) -> NativeSandbox | None:
        """The native sandbox (tests and tools read guest memory through it)."""
        return self._engine.native

    @property
    def debug_address(self) -> str | None:
        """Where the gdb server of ``debug="ADDRESS"`` listens (the port
        chosen for port 0), or None."""
        return self._gdb[0].address if self._gdb is not None else None

    def interrupt_handle(self) -> InterruptHandle:
        """A handle that any thread can use to stop the running call."""
        self._engine.check_open()
        return InterruptHandle(self._ih)

    def stats(self) -> dict[str, int]:
        """Counters of this sandbox: calls, runs (KVM_RUN ioctls),
        cancellations, signals_sent, stale_kicks,
        sys_fast (system requests the C core answered without Python)."""
        self._engine.check_open()
        native = self._engine.native
        assert native is not None
        return native.stats()

    def __repr__(self) -> str:
        lifecycle = self._engine.lifecycle
        state = lifecycle.state.value
        if lifecycle.state is State.BUSY and lifecycle.command is not None:
            state = f"busy: {lifecycle.command}"
        return f"<Sandbox {self.id} {self._label} [{state}]>"

    def call(
        self, name: str, /, *args: Any, timeout: float | None = None, cpu_timeout: float | None = None
    ) -> Coroutine[Any, Any, Any]:
        """Call the guest function ``name`` with ``args`` (int, float, bool,
        str, bytes, None, and lists and dicts of them) and return its result
        (await it: this returns a coroutine).

        ``timeout`` (seconds of wall-clock time, host functions included;
        None or infinity: no limit) stops the guest when it expires and
        raises :class:`CallTimeout`;
        ``cpu_timeout`` (seconds of CPU time the guest uses, host functions
        not included; default: the sandbox's ``cpu_timeout`` option) raises
        :class:`CpuTimeout`. The kernel enforces both (a timer on the vCPU
        thread). A cancelled task stops the guest too. In every case the
        vCPU has stopped before the exception reaches the caller, and the
        sandbox is poisoned."""
        tel = _telemetry.hooks  # None unless telemetry is on: the only cost when it is off
        if tel is None:
            return self._call(name, args, timeout, cpu_timeout)
        return tel.command(
            "call", self._engine, self.id, name, timeout, self._call(name, args, timeout, cpu_timeout)
        )

    async def _call(self, name: str, args: tuple[Any, ...], timeout: float | None, cpu_timeout: float | None) -> Any:
        engine = self._engine
        engine.check_usable()
        fn = engine.functions.get(name) if isinstance(name, str) else None
        if fn is None:
            if not isinstance(name, str):
                raise TypeError(f"function name must be a str, not {type(name).__name__}")
            raise GuestFunctionNotFound(f"guest {self._label} exports no function named {name!r}")
        request = encode_call(fn, self._prefixes[name], args)
        if len(request) > engine.config.input_size:
            raise ValueError(
                f"the arguments of {name}() take {len(request)} bytes, more than the "
                f"{engine.config.input_size}-byte input buffer (option input_size)"
            )
        seconds = check_seconds("timeout", timeout)
        cpu = engine.config.cpu_timeout if cpu_timeout is None else check_cpu_timeout(cpu_timeout)
        binding = engine.bind()
        async with binding.lock:  # asyncio.Lock: no yield when free
            if seconds is None:
                return await engine.call(binding, fn, request, call_limits(None, cpu, None))
            limits = CallLimits(seconds, cpu, now())
            if limits.deadline_ns:  # the kernel enforces it: no timer on the loop
                return await engine.call(binding, fn, request, limits)
            value, expired = await binding.with_timeout(lambda: engine.call(binding, fn, request, limits), seconds)
            if expired:
                raise self._timed_out(name, limits)
            return value

    async def run(
        self,
        argv: Sequence[str] = (),
        *,
        stdin: bytes | str = b"",
        env: Mapping[str, str] | None = None,
        timeout: float | None = None,
        cpu_timeout: float | None = None,
    ) -> RunResult:
        """Run the guest's ``main(argc, argv, envp)`` like a program and
        return a :class:`RunResult` (exit status, stdout, stderr).

        ``argv[0]`` is the program name (an empty ``argv`` means the guest's
        file name); ``env`` becomes ``K=V`` strings; ``stdin`` (bytes, or
        str as UTF-8) is what the guest reads from fd 0.

        Every run starts from the state right after start-up, like a fresh
        process: state left by earlier calls and runs is discarded, and a
        poisoned sandbox becomes usable again. ``timeout``, ``cpu_timeout``
        and cancellation stop the guest as for :meth:`call` (the sandbox is
        then poisoned until the next run or restore). Raises GuestFunctionNotFound for a
        guest without ``main()``."""
        tel = _telemetry.hooks
        if tel is None:
            return await self._run(argv, stdin, env, timeout, cpu_timeout)
        program = argv[0] if argv and isinstance(argv, Sequence) and isinstance(argv[0], str) else (
            _program_name(self._label))
        return await tel.command("run", self._engine, self.id, program, timeout,
                                 self._run(argv, stdin, env, timeout, cpu_timeout))

    async def _run(
        self,
        argv: Sequence[str],
        stdin: bytes | str,
        env: Mapping[str, str] | None,
        timeout: float | None,
        cpu_timeout: float | None,
    ) -> RunResult:
        engine = self._engine
        engine.check_open()
        if not engine.has_main:
            raise GuestFunctionNotFound(
                f"guest {self._label} has no main() to run; it can only be called "
                f"(functions: {', '.join(sorted(engine.functions)) or 'none'})"
            )
        args = check_argv(argv, _program_name(self._label))
        request = encode_run(args, check_env(env))
        data = check_stdin(stdin)
        if len(request) > engine.config.input_size:
            raise ValueError(
                f"the arguments and environment of the run take {len(request)} bytes, more than the "
                f"{engine.config.input_size}-byte input buffer (option input_size)"
            )
        seconds = check_seconds("timeout", timeout)
        cpu = engine.config.cpu_timeout if cpu_timeout is None else check_cpu_timeout(cpu_timeout)
        binding = engine.bind()
        async with binding.lock:
            if seconds is None:
                return await engine.run(binding, args, request, data, call_limits(None, cpu, None))
            limits = CallLimits(seconds, cpu, now())
            if limits.deadline_ns:  # the kernel enforces it: no timer on the loop
                return await engine.run(binding, args, request, data, limits)
            result, expired = await binding.with_timeout(
                lambda: engine.run(binding, args, request, data, limits), seconds
            )
            if result is None or expired:
                raise self._timed_out(f"the run of {args[0]}", limits, call=False)
            return result

    def _timed_out(self, name: str, limits: CallLimits, *, call: bool = True) -> CallTimeout:
        """The event loop's timer expired (a timeout too long for the
        kernel's; the kernel's deadline raises from the engine): the same
        error."""
        lifecycle = self._engine.lifecycle
        what = f"{name}()" if call else name
        error = limits.timeout_error(what)
        if lifecycle.poison is not None:  # not if the guest finished as the deadline hit
            lifecycle.poison = limits.poison_reason(what)
            if self._engine.last_core is not None:
                note_core(error, self._engine.last_core)
        return error

    async def snapshot(self) -> Snapshot:
        """Capture guest memory and all vCPU state. Refused (SandboxPoisoned)
        for a poisoned sandbox: its state is unknown. Waits for a call in
        progress to finish."""
        tel = _telemetry.hooks
        if tel is None:
            ptr = await self._engine.snapshot()
        else:
            ptr = await tel.simple("aionub.snapshot", tel.guest_attributes(self._engine, self.id),
                                   self._engine.snapshot())
        snapshot = Snapshot(ptr, self._label, self._engine.ready)
        log.debug("%r: snapshot of %d KiB", self, snapshot.nbytes // 1024)
        return snapshot

    async def restore(self, snapshot: Snapshot) -> None:
        """Bring guest memory and vCPU state back to ``snapshot`` and clear
        poisoning: the only way out of it. The snapshot must come from a
        sandbox of the same guest image and memory options (else
        ValueError). Copies back only the pages written since, when the
        snapshot was the last one taken or restored here.

        Once started, a restore runs to the end: if the calling task is
        cancelled meanwhile, the sandbox is restored and then the
        cancellation is raised."""
        if not isinstance(snapshot, Snapshot):
            raise TypeError(f"restore() needs a Snapshot, not {type(snapshot).__name__}")
        tel = _telemetry.hooks
        if tel is None:
            await self._engine.restore(snapshot._ptr)
        else:
            await tel.simple("aionub.restore", tel.guest_attributes(self._engine, self.id),
                             self._engine.restore(snapshot._ptr))
        log.debug("%r: restored to a snapshot of %d KiB", self, snapshot.nbytes // 1024)

    def _is_at(self, snapshot: Snapshot) -> bool:
        """True if guest state equals ``snapshot``: it was taken or restored
        here and no call has run since."""
        return self._engine.at_snapshot is snapshot._ptr

    async def aclose(self) -> None:
        """Close the sandbox: a call in flight is killed (it raises
        :class:`SandboxClosed`), a snapshot or restore in flight finishes
        first, queued calls raise SandboxClosed, the vCPU thread exits and
        every resource is released. Idempotent. Runs to the end even if the
        calling task is cancelled meanwhile; the cancellation is raised
        afterwards."""
        gdb, self._gdb = self._gdb, None
        if gdb is not None:
            await stop_debug_server(gdb)
        await self._engine.aclose()

    async def __aenter__(self) -> Sandbox:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()

    def __del__(self) -> None:
        engine = getattr(self, "_engine", None)
        if engine is None or engine.native is None or engine.generation != fork_generation():
            return
        warnings.warn(f"unclosed {self!r}; use 'async with' or 'await sandbox.aclose()'",
                      ResourceWarning, stacklevel=1)
        try:
            engine.release_now()
        except Exception:
            pass
