"""SandboxPool: sandboxes of one guest, created ahead of time and handed out
reset to a snapshot, for servers that run a guest function per request."""

from __future__ import annotations

import math
import os
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from types import TracebackType
from typing import Any

import anyio
from anyio.streams.memory import MemoryObjectReceiveStream, MemoryObjectSendStream

from . import _telemetry
from ._config import SandboxConfig
from ._exceptions import SandboxClosed, SandboxError
from ._hostcalls import HostFunction, check_host_functions
from ._run import RunResult
from ._sandbox import Sandbox, check_name, read_guest
from ._snapshot import Snapshot
from ._syscalls import check_files

__all__ = ("SandboxPool", "PoolTimeout")


class PoolTimeout(SandboxError, TimeoutError):
    """No sandbox of the pool became free within ``acquire_timeout``."""


@dataclass(eq=False, slots=True)
class _Entry:
    sandbox: Sandbox
    snapshot: Snapshot


class SandboxPool:
    """``size`` sandboxes of ``guest`` created by :meth:`start` (or ``async
    with``), growing on demand up to ``max_size``.

    ``async with pool.acquire() as sb:`` hands out a sandbox in the state of
    the pool's snapshot, taken right after the first sandbox was created: whatever
    one user did (including poisoning it) is undone before the next user
    gets it. When every sandbox is busy, ``acquire`` waits, first come first
    served, for at most ``acquire_timeout`` seconds (None: no limit), then
    raises :class:`PoolTimeout`. ``host_functions``, ``files`` and ``name``
    are given to every sandbox; other keyword arguments are sandbox options.
    ``setup``, an ``async def setup(sandbox)``, runs once, on the first
    sandbox, before the pool's snapshot (its *template*) is taken: load data
    or code once, for every user. Every other sandbox is spawned from the
    template (:meth:`Sandbox.spawn`): no initialisation, no setup, and guest
    memory shared copy-on-write among all of them.

    :meth:`call` and :meth:`run` do one call or run on a sandbox of the pool.
    """

    def __init__(
        self,
        guest: str | os.PathLike[str] | bytes,
        *,
        size: int = 4,
        max_size: int | None = None,
        acquire_timeout: float | None = None,
        host_functions: Mapping[str, HostFunction] | None = None,
        files: Mapping[str, bytes] | None = None,
        name: str | None = None,
        setup: Callable[[Sandbox], Awaitable[None]] | None = None,
        **config: Any,
    ) -> None:
        if setup is not None and not callable(setup):
            raise TypeError(f"setup must be an async callable taking the sandbox, not {type(setup).__name__}")
        if not isinstance(size, int) or isinstance(size, bool) or size < 1:
            raise ValueError(f"size must be a positive int, got {size!r}")
        if max_size is None:
            max_size = size
        if not isinstance(max_size, int) or isinstance(max_size, bool) or max_size < size:
            raise ValueError(f"max_size must be an int >= size ({size}), got {max_size!r}")
        if acquire_timeout is not None and (
            not isinstance(acquire_timeout, int | float)
            or isinstance(acquire_timeout, bool)
            or math.isnan(acquire_timeout)
            or acquire_timeout < 0
        ):
            raise ValueError(f"acquire_timeout must be None or a non-negative number, got {acquire_timeout!r}")
        SandboxConfig.from_kwargs(config)  # fail early on bad options
        self._image, self._label = read_guest(guest, check_name(name))
        self._host_functions = check_host_functions(host_functions)
        self._files = check_files(files)
        self._config = config
        self._setup = setup
        self._size = size
        self._max_size = max_size
        self._acquire_timeout = acquire_timeout
        self._entries: set[_Entry] = set()  # every live sandbox, idle or busy
        self._creating = 0
        self._send: MemoryObjectSendStream[_Entry] | None = None
        self._recv: MemoryObjectReceiveStream[_Entry] | None = None
        self._closed = False
        self._tel: _telemetry.Telemetry | None = None  # decided by start()
        # The snapshot of the first sandbox, after setup: every sandbox is
        # reset to it, and every other one is spawned from it.
        self._template: Snapshot | None = None

    # ---- lifecycle -------------------------------------------------------------

    async def start(self) -> None:
        """Create the first ``size`` sandboxes (concurrently)."""
        if self._send is not None:
            raise RuntimeError("the pool is already started")
        if self._closed:
            raise SandboxClosed("the pool is closed")
        self._send, self._recv = anyio.create_memory_object_stream[_Entry](math.inf)
        self._tel = _telemetry.refresh()
        try:
            await self._add_idle()  # the first one makes the template ...
            async with anyio.create_task_group() as tg:
                for _ in range(self._size - 1):  # ... the others are spawned from it
                    tg.start_soon(self._add_idle)
        except BaseExceptionGroup as group:
            await self.aclose()
            # The sandboxes fail alike (the same guest, options and setup):
            # raise the first failure itself, not the task group's wrapper.
            first = group.exceptions[0]
            while isinstance(first, BaseExceptionGroup):
                first = first.exceptions[0]
            raise first from None
        except BaseException:
            await self.aclose()
            raise

    async def aclose(self) -> None:
        """Close every sandbox (calls in flight raise SandboxClosed; a
        check-in in progress finishes first) and wake waiters with
        SandboxClosed. Idempotent. Runs to the end even if the calling task
        is cancelled meanwhile; the cancellation is raised afterwards."""
        self._closed = True
        if self._send is not None:
            self._send.close()
        entries, self._entries = self._entries, set()
        if self._tel is not None and entries:
            self._tel.pool_size.add(-len(entries), {"aionub.pool": self._label})
        cancelled: BaseException | None = None
        for entry in entries:
            try:
                await entry.sandbox.aclose()  # runs to the end, then raises a cancellation
            except anyio.get_cancelled_exc_class() as exc:
                cancelled = exc  # the other sandboxes still get closed
        if cancelled is not None:
            raise cancelled

    async def __aenter__(self) -> SandboxPool:
        await self.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()

    # ---- checkout ------------------------------------------------------------------

    def acquire(self) -> _Checkout:
        """``async with pool.acquire() as sandbox: ...``"""
        return _Checkout(self)

    async def call(
        self, name: str, /, *args: Any, timeout: float | None = None, cpu_timeout: float | None = None
    ) -> Any:
        """``Sandbox.call`` on a sandbox of the pool (acquired, then reset)."""
        async with self.acquire() as sandbox:
            return await sandbox.call(name, *args, timeout=timeout, cpu_timeout=cpu_timeout)

    async def run(
        self,
        argv: Sequence[str] = (),
        *,
        stdin: bytes | str = b"",
        env: Mapping[str, str] | None = None,
        timeout: float | None = None,
        cpu_timeout: float | None = None,
    ) -> RunResult:
        """``Sandbox.run`` on a sandbox of the pool (acquired, then reset)."""
        async with self.acquire() as sandbox:
            return await sandbox.run(argv, stdin=stdin, env=env, timeout=timeout, cpu_timeout=cpu_timeout)

    @property
    def size(self) -> int:
        """Sandboxes alive now, idle or busy."""
        return len(self._entries)

    @property
    def idle(self) -> int:
        """Sandboxes waiting to be handed out."""
        return self._recv.statistics().current_buffer_used if self._recv is not None else 0

    def __repr__(self) -> str:
        state = "closed" if self._closed else f"{self.size} sandboxes, {self.idle} idle"
        return f"<SandboxPool {self._label} [{state}]>"

    async def _new_entry(self) -> _Entry:
        template = self._template
        if template is None:
            sandbox = await Sandbox.create(
                self._image, host_functions=self._host_functions, files=self._files, name=self._label,
                **self._config
            )
            try:
                if self._setup is not None:
                    await self._setup(sandbox)
                template = await sandbox.snapshot()
            except BaseException:
                await sandbox.aclose()  # runs to the end, even when we are cancelled
                raise
            self._template = template
        else:
            # Spawned: memory shared copy-on-write with every other sandbox
            # of the pool, no initialisation, no setup; exactly at the template.
            sandbox = await Sandbox.spawn(
                template, host_functions=self._host_functions, files=self._files, name=self._label,
                **self._config
            )
        entry = _Entry(sandbox, template)
        if self._closed:
            await sandbox.aclose()
            raise SandboxClosed("the pool was closed")
        self._entries.add(entry)
        if self._tel is not None:
            self._tel.pool_size.add(1, {"aionub.pool": self._label})
        return entry

    async def _add_idle(self) -> None:
        entry = await self._new_entry()
        assert self._send is not None
        self._send.send_nowait(entry)

    async def _checkout(self) -> _Entry:
        if self._closed:
            raise SandboxClosed("the pool is closed")
        if self._recv is None:
            raise RuntimeError("start the pool first: 'async with pool:' or 'await pool.start()'")
        try:
            return self._recv.receive_nowait()
        except anyio.WouldBlock:
            pass
        except (anyio.EndOfStream, anyio.ClosedResourceError):
            raise SandboxClosed("the pool is closed") from None
        if len(self._entries) + self._creating < self._max_size:
            self._creating += 1  # grow; counted before the await so others see it
            try:
                return await self._new_entry()
            finally:
                self._creating -= 1
        try:
            if self._acquire_timeout is None:
                return await self._recv.receive()
            with anyio.fail_after(self._acquire_timeout):
                return await self._recv.receive()
        except TimeoutError:
            raise PoolTimeout(
                f"no sandbox of the pool became free within {self._acquire_timeout} s "
                f"({len(self._entries)} busy, max_size {self._max_size})"
            ) from None
        except (anyio.EndOfStream, anyio.ClosedResourceError):
            raise SandboxClosed("the pool is closed") from None

    async def _checkin(self, entry: _Entry) -> None:
        """Reset the sandbox to the snapshot and make it available again; a
        sandbox that was not reset (closed by the user, a failed restore, a
        cancellation before the restore began) is closed and dropped. Either
        way the entry is accounted for, also when the checking-in task is
        cancelled: a restore that began runs to the end."""
        sandbox = entry.sandbox
        try:
            if not self._closed and entry in self._entries and not sandbox.closed:
                await sandbox.restore(entry.snapshot)
        except SandboxError:
            pass  # dropped below
        finally:
            if not self._closed and entry in self._entries and sandbox._is_at(entry.snapshot):
                assert self._send is not None
                self._send.send_nowait(entry)
            else:
                if entry in self._entries:
                    self._entries.discard(entry)
                    if self._tel is not None:
                        self._tel.pool_size.add(-1, {"aionub.pool": self._label})
                await sandbox.aclose()


class _Checkout:
    __slots__ = ("_pool", "_entry", "_counted")

    def __init__(self, pool: SandboxPool) -> None:
        self._pool = pool
        self._entry: _Entry | None = None
        self._counted: _telemetry.Telemetry | None = None

    async def __aenter__(self) -> Sandbox:
        if self._entry is not None:
            raise RuntimeError("this checkout is already in use")
        pool = self._pool
        tel = pool._tel
        if tel is None:
            self._entry = await pool._checkout()
        else:
            self._entry = await tel.acquire(pool._label, pool._checkout())
            tel.pool_in_use.add(1, {"aionub.pool": pool._label})
            self._counted = tel
        return self._entry.sandbox

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        entry, self._entry = self._entry, None
        tel, self._counted = self._counted, None
        if tel is not None:
            tel.pool_in_use.add(-1, {"aionub.pool": self._pool._label})
        if entry is not None:
            await self._pool._checkin(entry)
