"""Where a guest's exported functions start: its export table (the
``.ab_exports`` section of ``struct ab_export`` records, aionub_guest.h)
read from guest memory, located through the ELF's section headers."""

from __future__ import annotations

import struct
from typing import Any

__all__ = ("export_addresses",)

_RECORD = 40  # struct ab_export: name, fn, ret, nparams, params[16], padded to 8
_MAX_NAME = 255


def _section(image: bytes, wanted: bytes) -> tuple[int, int] | None:
    """(address, size) of the named section, or None."""
    try:
        if image[:4] != b"\x7fELF" or image[4] != 2:
            return None
        shoff, = struct.unpack_from("<Q", image, 0x28)
        shentsize, shnum, shstrndx = struct.unpack_from("<HHH", image, 0x3A)
        names_off, = struct.unpack_from("<Q", image, shoff + shstrndx * shentsize + 0x18)
        for i in range(shnum):
            base = shoff + i * shentsize
            name_at, = struct.unpack_from("<I", image, base)
            start = names_off + name_at
            name = image[start : image.index(b"\0", start)]
            if name == wanted:
                addr, = struct.unpack_from("<Q", image, base + 0x10)
                size, = struct.unpack_from("<Q", image, base + 0x20)
                return addr, size
    except (struct.error, ValueError, IndexError):
        return None
    return None


def export_addresses(image: bytes, memory: Any) -> dict[str, int]:
    """Exported name -> entry address. ``memory`` is the guest's (identity
    mapped) memory; every pointer is checked against it."""
    found = _section(image, b".ab_exports")
    if found is None:
        return {}
    addr, size = found
    limit = len(memory)
    out: dict[str, int] = {}
    for at in range(addr, addr + size - _RECORD + 1, _RECORD):
        if at + _RECORD > limit:
            break
        name_ptr, fn = struct.unpack_from("<QQ", memory, at)
        if not 0 < name_ptr < limit:
            continue
        raw = bytes(memory[name_ptr : min(limit, name_ptr + _MAX_NAME + 1)])
        end = raw.find(b"\0")
        if end > 0:
            out[raw[:end].decode("utf-8", "replace")] = fn
    return out
