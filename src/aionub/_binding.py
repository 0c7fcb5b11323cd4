"""How an event loop waits for a sandbox's vCPU thread: the one place where
asyncio and anyio (trio) part ways.

The vCPU thread reports each event by writing to an eventfd. Every event
loop that drives a sandbox gets its own eventfd (a *binding*), so a sandbox
can move between loops and threads without two loops racing for one fd.

- asyncio (and uvloop): the eventfd stays registered with ``add_reader`` for
  the binding's life; the reader callback acknowledges the event and wakes
  the waiting future. No per-call registration, no extra task.
- any other anyio backend (trio): ``anyio.wait_readable`` per wait.

Every wait comes in two kinds:

- ``wait()``: cancellable. Only for a call, whose owner then stops the vCPU
  with ``stop()``.
- ``stop()``, ``finish()`` and ``sleep_through()``: they run to the end
  whatever happens to the waiting task, and hand back the cancellation that
  arrived meanwhile; the caller re-raises it with ``deliver()`` once its
  work is done. On asyncio this does not rely on shields (``task.cancel()`` goes
  through anyio's shields): each wait on a future that a cancellation
  spoiled is simply made again. On trio it is a shielded cancel scope.

``stop()`` is the non-blocking kill protocol: set CANCEL and kick, re-kick
from loop timers every ``retry_delay`` until the vCPU thread reports that it
stopped. The event loop never sleeps or blocks on a kill.
"""

from __future__ import annotations

import asyncio
import math
import os
import threading
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import anyio
import anyio.lowlevel

from ._native import EAGAIN, NativeSandbox, lib

__all__ = (
    "AsyncioBinding", "AnyioBinding", "Binding", "Deferred", "deliver", "new_binding", "running_loop", "sleep_through",
)

T = TypeVar("T")

#: A cancellation that arrived while a wait ran to the end, or None. On trio
#: it is a marker only: the cancel scope itself is re-checked by deliver().
Deferred = BaseException | None


def running_loop() -> asyncio.AbstractEventLoop | None:
    """The running asyncio loop, or None under another anyio backend."""
    return asyncio._get_running_loop()


def _new_eventfd() -> int:
    return os.eventfd(0, os.EFD_NONBLOCK | os.EFD_CLOEXEC)


def _submit_error(rc: int) -> OSError:
    return OSError(-rc, f"cannot hand the command to the vCPU thread: {os.strerror(-rc)}")


class _Commands:
    """Handing commands to the vCPU thread, with this binding's eventfd as
    the completion target. ``kind`` is 0 while an event is outstanding.
    The native sandbox stays owned by the Sandbox; a binding only borrows
    it, and is closed before the native sandbox is released."""

    __slots__ = ("native", "fd", "kind", "thread")
    native: NativeSandbox
    fd: int
    kind: int
    thread: int

    def submit(self, func: Any, *args: Any) -> None:
        """Hand a command over through an ``ab_sandbox_submit*``/``start``
        function taking (sandbox, *args, notify_fd)."""
        self.kind = 0
        rc = func(self.native.ptr, *args, self.fd)
        if rc < 0:
            raise _submit_error(rc)

    def _ack(self) -> int:
        """The event kind if it has arrived (consuming the notification),
        else 0."""
        if not self.kind:
            kind = lib.ab_sandbox_ack(self.native.ptr, self.fd)
            if kind != EAGAIN:
                self.kind = kind
        return self.kind


class AsyncioBinding(_Commands):
    __slots__ = ("loop", "fut", "lock", "_rekick", "_timeout")

    def __init__(self, loop: asyncio.AbstractEventLoop, native: NativeSandbox) -> None:
        self.loop = loop
        self.native = native
        self.fd = _new_eventfd()
        self.kind = 0
        self.fut: asyncio.Future[int] | None = None
        self.thread = threading.get_ident()
        self.lock = asyncio.Lock()
        self._rekick: asyncio.TimerHandle | None = None
        self._timeout: asyncio.Timeout | None = None  # the running with_timeout()
        loop.add_reader(self.fd, self._readable)

    def _readable(self) -> None:
        if not self._ack():
            return
        fut = self.fut
        if fut is not None:
            self.fut = None
            if not fut.done():
                fut.set_result(self.kind)

    async def wait(self) -> int:
        """The kind of the event for the last command (cancellable)."""
        if not self.kind:
            fut = self.loop.create_future()
            self.fut = fut
            await fut
        return self.kind

    async def finish(self) -> tuple[int, Deferred]:
        """Wait for the event, deferring cancellation."""
        deferred: Deferred = None
        while not self.kind:
            fut = self.loop.create_future()
            self.fut = fut
            try:
                await fut
            except asyncio.CancelledError as exc:
                deferred = exc  # the future is spoiled; wait on a new one
        return self.kind, deferred

    async def stop(self, ih: Any, retry_delay: float) -> tuple[int, Deferred]:
        """Kill the command in flight and wait until the vCPU has stopped;
        returns the event that ended it and any cancellation deferred
        meanwhile."""
        if self.kind:
            return self.kind, None
        lib.ab_interrupt_cancel(ih)
        self._schedule_rekick(ih, retry_delay)
        try:
            return await self.finish()
        finally:
            if self._rekick is not None:
                self._rekick.cancel()
                self._rekick = None

    def _schedule_rekick(self, ih: Any, delay: float) -> None:
        # Some loops (uvloop) round timers to whole milliseconds: a shorter
        # delay would turn into a busy loop of kicks.
        delay = max(delay, 0.001)

        def rekick() -> None:
            if self.kind:
                self._rekick = None
                return
            lib.ab_interrupt_kick(ih)
            self._rekick = self.loop.call_later(delay, rekick)

        self._rekick = self.loop.call_later(delay, rekick)

    @staticmethod
    async def checkpoint_if_cancelled() -> None:
        task = asyncio.current_task()
        if task is not None and task.cancelling():
            await asyncio.sleep(0)

    async def with_timeout(self, func: Callable[[], Awaitable[T]], seconds: float) -> tuple[T | None, bool]:
        """``(result, False)``, or ``(None, True)`` if ``seconds`` ran out.
        ``pause_deadline()`` stops its clock."""
        cm = self._timeout = asyncio.timeout(seconds)
        try:
            return await AsyncioBinding._within(func, cm)
        finally:
            self._timeout = None

    @staticmethod
    async def with_deadline(func: Callable[[], Awaitable[T]], deadline: float) -> tuple[T | None, bool]:
        """The same, until ``deadline`` on the loop's clock."""
        return await AsyncioBinding._within(func, asyncio.timeout_at(deadline))

    @staticmethod
    async def _within(func: Callable[[], Awaitable[T]], cm: asyncio.Timeout) -> tuple[T | None, bool]:
        try:
            async with cm:
                return await func(), False
        except TimeoutError:
            if cm.expired():
                return None, True
            raise

    def pause_deadline(self) -> float | None:
        """Stop the clock of the running ``with_timeout()`` (while a
        debugger holds the guest); the seconds that were left, or None."""
        cm = self._timeout
        when = cm.when() if cm is not None else None
        if cm is None or when is None:
            return None
        cm.reschedule(None)
        return max(0.0, when - self.loop.time())

    def resume_deadline(self, left: float | None) -> None:
        """Restart the clock ``pause_deadline()`` stopped."""
        if left is not None and self._timeout is not None:
            self._timeout.reschedule(self.loop.time() + left)

    def close(self) -> None:
        """Unregister and close the eventfd, from whatever thread we are on.
        Only when no command is in flight on it."""
        loop = self.loop
        if loop.is_closed():
            os.close(self.fd)
        elif threading.get_ident() == self.thread or not loop.is_running():
            loop.remove_reader(self.fd)
            os.close(self.fd)
        else:
            loop.call_soon_threadsafe(self._close_in_loop)

    def _close_in_loop(self) -> None:
        self.loop.remove_reader(self.fd)
        os.close(self.fd)


class AnyioBinding(_Commands):
    """For event loops other than asyncio's (trio), through anyio."""

    __slots__ = ("lock", "_scope")

    loop = None

    def __init__(self, native: NativeSandbox) -> None:
        self.native = native
        self.fd = _new_eventfd()
        self.kind = 0
        self.thread = threading.get_ident()
        self.lock = anyio.Lock()
        self._scope: anyio.CancelScope | None = None

    async def wait(self) -> int:
        while not self._ack():
            await anyio.wait_readable(self.fd)
        return self.kind

    async def finish(self) -> tuple[int, Deferred]:
        with anyio.CancelScope(shield=True):
            while not self._ack():
                await anyio.wait_readable(self.fd)
        return self.kind, None  # deliver() re-checks the enclosing scopes

    async def stop(self, ih: Any, retry_delay: float) -> tuple[int, Deferred]:
        if self._ack():
            return self.kind, None
        lib.ab_interrupt_cancel(ih)
        with anyio.CancelScope(shield=True):
            while not self._ack():
                with anyio.move_on_after(retry_delay):
                    await anyio.wait_readable(self.fd)
                if not self._ack():
                    lib.ab_interrupt_kick(ih)
        return self.kind, None

    @staticmethod
    async def checkpoint_if_cancelled() -> None:
        await anyio.lowlevel.checkpoint_if_cancelled()

    async def with_timeout(self, func: Callable[[], Awaitable[T]], seconds: float) -> tuple[T | None, bool]:
        try:
            with anyio.move_on_after(seconds) as scope:
                self._scope = scope
                return await func(), False
        finally:
            self._scope = None
        if scope.cancelled_caught:
            return None, True
        raise AssertionError("unreachable: the awaitable neither returned nor timed out")

    @staticmethod
    async def with_deadline(func: Callable[[], Awaitable[T]], deadline: float) -> tuple[T | None, bool]:
        with anyio.CancelScope(deadline=deadline) as scope:
            return await func(), False
        if scope.cancelled_caught:
            return None, True
        raise AssertionError("unreachable: the awaitable neither returned nor timed out")

    def pause_deadline(self) -> float | None:
        scope = self._scope
        if scope is None or scope.deadline == math.inf:
            return None
        left = max(0.0, scope.deadline - anyio.current_time())
        scope.deadline = math.inf
        return left

    def resume_deadline(self, left: float | None) -> None:
        if left is not None and self._scope is not None:
            self._scope.deadline = anyio.current_time() + left

    def close(self) -> None:
        """Close the eventfd (no task waits on it: no command is in flight).
        Tell trio first, so that it forgets the fd number, which the next
        eventfd may reuse."""
        try:
            anyio.notify_closing(self.fd)
        except Exception:
            pass  # not inside an event loop (garbage collection): nothing to tell
        os.close(self.fd)


Binding = AsyncioBinding | AnyioBinding


async def sleep_through(delay: float) -> Deferred:
    """Sleep ``delay`` seconds on the running loop, deferring cancellation."""
    loop = running_loop()
    if loop is None:
        with anyio.CancelScope(shield=True):
            await anyio.sleep(delay)
        return None  # deliver() re-checks the enclosing scopes
    deferred: Deferred = None
    deadline = loop.time() + delay
    while (left := deadline - loop.time()) > 0:
        try:
            await asyncio.sleep(left)
        except asyncio.CancelledError as exc:
            deferred = exc
    return deferred


async def deliver(deferred: Deferred) -> None:
    """Re-raise a cancellation that a wait deferred, once the work it
    deferred is done. On trio, a checkpoint: the cancel scope still holds."""
    if running_loop() is None:
        await anyio.lowlevel.checkpoint_if_cancelled()
    elif deferred is not None:
        raise deferred


def new_binding(native: NativeSandbox) -> Binding:
    """A binding for the running event loop."""
    loop = running_loop()
    return AsyncioBinding(loop, native) if loop is not None else AnyioBinding(native)
