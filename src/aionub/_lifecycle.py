"""The lifecycle of a sandbox: one state, its transitions, and the command in
flight. Pure bookkeeping: no I/O, no event loop, no native calls.

::

            create() / spawn()
                    │
                    ▼
                  BUSY ────── creation fails ─────────────────────────┐
                    │ ready                                             │
                    ▼                                                   │
      ┌──────▶  IDLE ──── call / snapshot / restore ───▶ BUSY          │
      │          ▲  ▲                                      │            │
      │          │  └──────────── completed ───────────────┤            │
      │          │                                          │ a call did │
      │ restore  │                                          │ not complete
      │ succeeded│                                          ▼            │
      └───── BUSY ◀──────── restore ──────────────────  POISONED        │
             (restore fails: back to POISONED)                          │
                                                                        │
   IDLE, POISONED, BUSY ── aclose() ──▶ CLOSING ── the command in ─────▶ CLOSED
                                          │         flight has ended,
                                          │         VM torn down
                                          └─ (no new command starts)

Invariants:

- At most one command is in flight (``command`` is not None). Only the task
  that began it ends it, and it always does, whatever happens to it
  (cancellation, timeout, close): the waits on the vCPU thread's event
  defer cancellation until the event has arrived.
- Teardown starts only once no command is in flight: nothing that a
  command's owner still uses is ever released under it.
- POISONED is left only through a successful restore (or close).
"""

from __future__ import annotations

import enum

from ._exceptions import SandboxClosed, SandboxPoisoned

__all__ = ("State", "Lifecycle")


class State(enum.Enum):
    IDLE = "idle"
    """Ready for a command."""
    POISONED = "poisoned"
    """Idle, but a call did not run to completion: only ``restore()`` (or
    ``aclose()``) may follow."""
    BUSY = "busy"
    """A command is in flight: creation, a call, a snapshot or a restore."""
    CLOSING = "closing"
    """``aclose()`` has begun: no new command starts; the one in flight (if
    any) is being stopped, then the VM is torn down."""
    CLOSED = "closed"
    """Everything is released."""


#: Every allowed transition; anything else is a bug in the sandbox code.
TRANSITIONS: dict[State, frozenset[State]] = {
    State.BUSY: frozenset({State.IDLE, State.POISONED, State.CLOSING, State.CLOSED}),
    State.IDLE: frozenset({State.BUSY, State.CLOSING, State.CLOSED}),
    State.POISONED: frozenset({State.BUSY, State.CLOSING, State.CLOSED}),
    State.CLOSING: frozenset({State.CLOSED}),
    State.CLOSED: frozenset(),
}


class Lifecycle:
    """The state of one sandbox, the command in flight and why it is
    poisoned. ``label`` names the sandbox in error messages."""

    __slots__ = ("state", "command", "poison", "label")

    def __init__(self, label: str) -> None:
        self.state = State.BUSY  # creation is the first command
        self.command: str | None = "initialisation"
        self.poison: str | None = None
        self.label = label

    def _move(self, new: State) -> None:
        if new not in TRANSITIONS[self.state]:
            raise AssertionError(f"{self.label}: no transition from {self.state.name} to {new.name}")
        self.state = new

    # ---- checks before a command --------------------------------------------------

    def check_open(self) -> None:
        if self.state is State.CLOSING or self.state is State.CLOSED:
            raise SandboxClosed(f"{self.label} is closed")

    def check_usable(self) -> None:
        """For calls and snapshots: open and not poisoned."""
        self.check_open()
        if self.poison is not None:
            raise SandboxPoisoned(f"{self.label} is poisoned: {self.poison}")

    # ---- commands -----------------------------------------------------------------------

    def begin(self, command: str, *, restoring: bool = False) -> None:
        """A command starts (the caller holds the sandbox's lock, so none is
        in flight). Only a restore may start from POISONED."""
        if restoring:
            self.check_open()
        else:
            self.check_usable()
        assert self.command is None, f"{self.label}: {command} while {self.command} is in flight"
        self._move(State.BUSY)
        self.command = command

    def end(self, *, restored: bool = False) -> None:
        """The command in flight has ended and its owner is done with it. A
        successful restore clears poisoning."""
        self.command = None
        if restored:
            self.poison = None
        if self.state is State.BUSY:
            self._move(State.POISONED if self.poison is not None else State.IDLE)

    def set_poison(self, reason: str) -> None:
        """The command in flight did not run to completion (the first reason
        is kept)."""
        if self.poison is None:
            self.poison = reason

    # ---- closing ------------------------------------------------------------------------

    def start_closing(self) -> bool:
        """True if this caller owns the teardown (the first aclose())."""
        if self.state is State.CLOSING or self.state is State.CLOSED:
            return False
        self._move(State.CLOSING)
        return True

    def closed(self) -> None:
        self.command = None
        self._move(State.CLOSED)

    @property
    def is_closed(self) -> bool:
        """Closing or closed: no new command may start."""
        return self.state is State.CLOSING or self.state is State.CLOSED
