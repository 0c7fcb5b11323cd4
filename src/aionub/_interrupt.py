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
        self._check_process()
        return bool(lib.ab_interrupt_kill(self._ptr))

    def kill_from_debugger(self) -> bool:
        """Pause the running call for a debugger (the seed's debug
        interrupt): set DEBUG_INTERRUPT and signal until the vCPU is no
        longer running; blocks like :meth:`kill`. Unlike ``kill()`` the call
        is not ended and the sandbox is not poisoned: with a gdb client
        attached the guest stops for it (gdb sees SIGINT); without one the
        call resumes at once (``docs/debugging.md``). If CANCEL is set too,
        cancellation wins. The flag stays set until
        :meth:`clear_debug_interrupt` (the engine clears it when it resumes
        the guest). Returns True if a signal had to be sent."""
        self._check_process()
        return bool(lib.ab_interrupt_kill_from_debugger(self._ptr))

    def is_debug_interrupted(self) -> bool:
        """True while DEBUG_INTERRUPT is set."""
        return bool(lib.ab_interrupt_is_debug_interrupted(self._ptr))

    def clear_debug_interrupt(self) -> None:
        """Clear DEBUG_INTERRUPT (a later pause needs a new
        :meth:`kill_from_debugger`)."""
        lib.ab_interrupt_clear_debug_interrupt(self._ptr)

    def _check_process(self) -> None:
        if os.getpid() != self._pid:
            raise SandboxError(
                "this interrupt handle belongs to the parent process; a forked child cannot stop its calls"
            )

    def dropped(self) -> bool:
        """True once the sandbox has been closed."""
        return bool(lib.ab_interrupt_dropped(self._ptr))

    def __repr__(self) -> str:
        return f"<InterruptHandle dropped={self.dropped()}>"
