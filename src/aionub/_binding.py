"""How an event loop waits for a sandbox's vCPU thread.

The vCPU thread reports each event by writing to an eventfd. Every event
loop that drives a sandbox gets its own eventfd (a *binding*), so a sandbox
can move between loops and threads without two loops racing for one fd.

- asyncio (and uvloop): the eventfd stays registered with ``add_reader`` for
  the binding's life; the reader callback acknowledges the event and wakes
  the waiting future. No per-call registration, no extra task.
- any other anyio backend (trio): ``anyio.wait_readable`` per wait.

``stop()`` is the non-blocking kill protocol: set CANCEL and kick, re-kick
from loop timers every ``retry_delay`` until the vCPU thread reports that it
stopped, ignoring further cancellation meanwhile. Only then does the caller
re-raise. The event loop never sleeps or blocks on a kill.
"""

from __future__ import annotations

import asyncio
import os
import threading
from typing import Any

import anyio

from ._native import EAGAIN, lib

__all__ = ("AsyncioBinding", "AnyioBinding", "Binding")


def _new_eventfd() -> int:
    return os.eventfd(0, os.EFD_NONBLOCK | os.EFD_CLOEXEC)


def _submit_error(rc: int) -> OSError:
    return OSError(-rc, f"cannot hand the command to the vCPU thread: {os.strerror(-rc)}")


class _Commands:
    """Handing commands to the vCPU thread, with this binding's eventfd as
    the completion target. `kind` is 0 while an event is outstanding."""

    __slots__ = ("ptr", "fd", "kind")
    ptr: Any
    fd: int
    kind: int

    def start(self) -> None:
        self.kind = 0
        rc = lib.ab_sandbox_start(self.ptr, self.fd)
        if rc < 0:
            raise _submit_error(rc)

    def submit(self, cmd: int) -> None:
        self.kind = 0
        rc = lib.ab_sandbox_submit(self.ptr, cmd, self.fd)
        if rc < 0:
            raise _submit_error(rc)

    def submit_with(self, func: Any, *args: Any) -> None:
        """Submit through another ab_sandbox_submit_* function."""
        self.kind = 0
        rc = func(self.ptr, *args, self.fd)
        if rc < 0:
            raise _submit_error(rc)


class AsyncioBinding(_Commands):
    __slots__ = ("loop", "fut", "thread", "_rekick")

    def __init__(self, loop: asyncio.AbstractEventLoop, ptr: Any) -> None:
        self.loop = loop
        self.ptr = ptr
        self.fd = _new_eventfd()
        self.kind = 0  # 0: an event is outstanding; > 0: the last event's kind
        self.fut: asyncio.Future[int] | None = None
        self.thread = threading.get_ident()
        self._rekick: asyncio.TimerHandle | None = None
        loop.add_reader(self.fd, self._readable)

    def _readable(self) -> None:
        kind = lib.ab_sandbox_ack(self.ptr, self.fd)
        if kind == EAGAIN:
            return
        self.kind = kind
        fut = self.fut
        if fut is not None:
            self.fut = None
            if not fut.done():
                fut.set_result(kind)


    async def wait(self) -> int:
        """The kind of the event for the last command (cancellable)."""
        if not self.kind:
            fut = self.loop.create_future()
            self.fut = fut
            await fut
        return self.kind

    async def stop(self, ih: Any, retry_delay: float) -> int:
        """Kill the command in flight and wait until the vCPU has stopped;
        returns the event that ended it. Cancellation is deferred, not lost:
        the caller re-raises once this returns."""
        if self.kind:
            return self.kind
        lib.ab_interrupt_cancel(ih)
        self._schedule_rekick(ih, retry_delay)
        try:
            while not self.kind:
                fut = self.loop.create_future()
                self.fut = fut
                try:
                    await fut
                except asyncio.CancelledError:
                    continue  # keep waiting: the vCPU must stop first
        finally:
            if self._rekick is not None:
                self._rekick.cancel()
                self._rekick = None
        return self.kind

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

    def close(self) -> None:
        """Unregister and close the eventfd, from whatever thread we are on."""
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

    __slots__ = ("thread",)

    loop = None

    def __init__(self, ptr: Any) -> None:
        self.ptr = ptr
        self.fd = _new_eventfd()
        self.kind = 0
        self.thread = threading.get_ident()


    def _poll(self) -> int:
        if not self.kind:
            kind = lib.ab_sandbox_ack(self.ptr, self.fd)
            if kind != EAGAIN:
                self.kind = kind
        return self.kind

    async def wait(self) -> int:
        while not self._poll():
            await anyio.wait_readable(self.fd)
        return self.kind

    async def stop(self, ih: Any, retry_delay: float) -> int:
        if self._poll():
            return self.kind
        lib.ab_interrupt_cancel(ih)
        with anyio.CancelScope(shield=True):
            while not self._poll():
                with anyio.move_on_after(retry_delay):
                    await anyio.wait_readable(self.fd)
                if not self._poll():
                    lib.ab_interrupt_kick(ih)
        return self.kind

    def close(self) -> None:
        os.close(self.fd)


Binding = AsyncioBinding | AnyioBinding
