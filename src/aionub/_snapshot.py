"""Snapshot: a restorable copy of a sandbox's guest memory and vCPU state."""

from __future__ import annotations

from typing import Any

from ._native import lib

__all__ = ("Snapshot",)


class Snapshot:
    """Taken with ``await sb.snapshot()``, applied with ``await
    sb.restore(snapshot)``. Holds guest memory (only pages the guest or host
    ever wrote) and all vCPU state. It can be restored any number of times,
    into the sandbox that took it or any other sandbox created from the
    same guest image with the same memory options."""

    __slots__ = ("_ptr", "_guest", "__weakref__")

    def __init__(self, ptr: Any, guest: str) -> None:
        self._ptr = ptr
        self._guest = guest

    @property
    def nbytes(self) -> int:
        """Bytes of guest memory this snapshot holds."""
        return int(lib.ab_snapshot_bytes(self._ptr))

    def __repr__(self) -> str:
        return f"<Snapshot of {self._guest} ({self.nbytes // 1024} KiB)>"
