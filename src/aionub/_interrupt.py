"""InterruptHandle: stop a sandbox's running call from any thread."""

from __future__ import annotations

import os
from typing import Any

from ._exceptions import SandboxError
from ._native import lib

__all__ = ("InterruptHandle",)


class InterruptHandle:
    """Returned by :meth:`Sandbox.interrupt_handle`. Safe to use from any
    thread, and after the sandbox is closed (then it does nothing).

    Semantics follow Hyperlight's interrupt handle: ``kill()`` sets the
    CANCEL bit and signals the vCPU thread until the guest is no longer
    running. A call in progress then raises :class:`ExecutionCancelled` and
    poisons the sandbox. CANCEL is cleared when the next call starts, so a
    kill with no call running affects no later call."""

    __slots__ = ("_ptr", "_pid")

    def __init__(self, ptr: Any) -> None:
        self._ptr = ptr
        self._pid = os.getpid()

    def kill(self) -> bool:
        """Stop the running call; blocks (without the GIL) until the vCPU is
        no longer running. Returns True if a signal had to be sent, i.e.
        the guest was executing. Do not call it on an event loop thread:
        there, cancel the task or use ``timeout=``.

        Raises SandboxError in a forked child: the vCPU thread stayed in the
        parent, and the child's copy of the handle would wait forever for
        a call that was running at the fork to stop."""
        if os.getpid() != self._pid:
            raise SandboxError(
                "this interrupt handle belongs to the parent process; a forked child cannot stop its calls"
            )
        return bool(lib.ab_interrupt_kill(self._ptr))

    def dropped(self) -> bool:
        """True once the sandbox has been closed."""
        return bool(lib.ab_interrupt_dropped(self._ptr))

    def __repr__(self) -> str:
        return f"<InterruptHandle dropped={self.dropped()}>"
