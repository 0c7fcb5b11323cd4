"""Snapshot: a restorable copy of a sandbox's guest memory and vCPU state."""

from __future__ import annotations

import os
from typing import Any

from ._native import ffi, lib, snapshot_digest

__all__ = ("Snapshot", "MEMORY_OPTIONS")

#: The options that fix a sandbox's memory layout: a snapshot records them,
#: and a sandbox spawned from it or restored to it must have the same.
MEMORY_OPTIONS = ("memory_size", "stack_size", "input_size", "output_size")


class Snapshot:
    """Taken with ``await sb.snapshot()``, applied with ``await
    sb.restore(snapshot)``. Holds guest memory (only pages the guest or host
    ever wrote) and all vCPU state. It can be restored any number of times,
    into the sandbox that took it or any other sandbox created from the
    same guest image with the same memory options, and new sandboxes can be
    spawned from it (:meth:`Sandbox.spawn`). :meth:`save` writes it to a
    file that :meth:`load` reads back."""

    __slots__ = ("_ptr", "_guest", "_ready", "__weakref__")

    def __init__(self, ptr: Any, guest: str, ready: bytes) -> None:
        self._ptr = ptr
        self._guest = guest
        # The guest's READY record (its function table and flags), which a
        # spawned sandbox gets instead of running initialisation.
        self._ready = ready

    @property
    def nbytes(self) -> int:
        """Bytes of guest memory this snapshot holds."""
        return int(lib.ab_snapshot_bytes(self._ptr))

    @property
    def guest(self) -> str:
        """The name of the guest it was taken from (``name=``, the path, or
        ``bytes:`` and a short SHA-256)."""
        return self._guest

    @property
    def image_sha256(self) -> str:
        """The SHA-256 digest (hex) of the guest image it was taken from."""
        return snapshot_digest(self._ptr).hex()

    @property
    def memory_options(self) -> dict[str, int]:
        """The memory options it was taken with (``memory_size``,
        ``stack_size``, ``input_size``, ``output_size``)."""
        layout = ffi.new("struct ab_layout *")
        lib.ab_snapshot_layout(self._ptr, layout)
        return {name: int(getattr(layout, name)) for name in MEMORY_OPTIONS}

    def save(self, path: str | os.PathLike[str]) -> None:
        """Write the snapshot to ``path`` (replaced atomically, mode 0600): a versioned
        file with the image's identity, the memory layout, the vCPU state,
        the pages the snapshot holds and a SHA-256 checksum. Anyone who can
        write the file controls the guest: keep it as safe as the guest's
        code (docs/security.md)."""
        from ._snapfile import save

        save(self, path)

    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> Snapshot:
        """Read a file :meth:`save` wrote. Raises
        :class:`InvalidSnapshotFile` for anything that is not such a file,
        intact: another format or version, a truncated or altered file (the
        checksum), fields that contradict each other, or vCPU state this
        host cannot restore."""
        from ._snapfile import load

        return load(path)

    def __repr__(self) -> str:
        return f"<Snapshot of {self._guest} ({self.nbytes // 1024} KiB)>"
