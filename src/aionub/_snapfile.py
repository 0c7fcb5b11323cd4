"""Snapshot files: :meth:`Snapshot.save` and :meth:`Snapshot.load`.

Format, version 1 (integers little-endian)::

    offset  size
    0       16    magic b"\\x89aionub-snap\\r\\n\\x1a\\n"
    16      4     version (1)
    20      4     flags (0)
    24      32    SHA-256 of the guest image
    56      104   memory layout: 13 u64, as struct ab_layout (host.h)
    160     4+n   u32 n, the guest's name (UTF-8)
            4+n   u32 n, the guest's READY record (function table, flags)
            4+n   u32 n, the vCPU state record (native/snapfile.c)
            4+n   u32 n, the page map: a bit per page of guest memory
            8+n   u64 n, the pages the map marks, in page order
    end-32  32    SHA-256 of every byte before it

Only pages the snapshot holds are in the file (the rest are zero). Load
checks the checksum before it believes anything else, then every length
against what is left, then every field (the C core checks the layout and
the vCPU state).
"""

from __future__ import annotations

import hashlib
import os
import stat
import struct
import tempfile
from pathlib import Path
from typing import IO, Any

from ._exceptions import GuestProtocolError, InvalidSnapshotFile
from ._native import ffi, lib, probe_kvm
from ._snapshot import Snapshot
from ._wire import decode_ready

__all__ = ("save", "load", "MAGIC", "VERSION")

MAGIC = b"\x89aionub-snap\r\n\x1a\n"
VERSION = 1
_PAGE = 4096
_LAYOUT_FIELDS = (
    "memory_size", "image_start", "image_end", "input_addr", "input_size", "output_addr", "output_size",
    "heap_addr", "heap_size", "guard_addr", "stack_addr", "stack_size", "entry",
)
_HEAD = struct.Struct(f"<16sII32s{len(_LAYOUT_FIELDS)}Q")
_DIGEST = 32
_ERRLEN = 512


class _HashingWriter:
    def __init__(self, f: IO[bytes]) -> None:
        self.f = f
        self.hash = hashlib.sha256()

    def write(self, data: bytes | memoryview) -> None:
        self.hash.update(data)
        self.f.write(data)


def save(snapshot: Snapshot, path: str | os.PathLike[str]) -> None:
    ptr = snapshot._ptr
    layout = ffi.new("struct ab_layout *")
    lib.ab_snapshot_layout(ptr, layout)
    digest = ffi.new("uint8_t[32]")
    lib.ab_snapshot_image_sha256(ptr, digest)
    state = ffi.new("uint8_t[]", lib.ab_snapshot_state_size(ptr))
    if lib.ab_snapshot_export_state(ptr, state, len(state)) < 0:
        raise AssertionError("the vCPU state record changed size")  # cannot happen
    present = ffi.new("uint8_t[]", lib.ab_snapshot_present_size(ptr))
    lib.ab_snapshot_present(ptr, present)
    pagemap = bytes(ffi.buffer(present))
    pages = _runs(pagemap, int(layout.memory_size) // _PAGE)
    memory = ffi.buffer(lib.ab_snapshot_memory(ptr), int(layout.memory_size))
    label = snapshot._guest.encode()
    target = Path(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", dir=target.parent or ".")
    try:
        with os.fdopen(fd, "wb") as f:
            w = _HashingWriter(f)
            w.write(_HEAD.pack(MAGIC, VERSION, 0, bytes(ffi.buffer(digest)),
                               *(int(getattr(layout, name)) for name in _LAYOUT_FIELDS)))
            for part in (label, snapshot._ready, bytes(ffi.buffer(state)), pagemap):
                w.write(struct.pack("<I", len(part)))
                w.write(part)
            w.write(struct.pack("<Q", sum(n for _, n in pages) * _PAGE))
            view = memoryview(memory)
            for first, n in pages:
                w.write(view[first * _PAGE : (first + n) * _PAGE])
            f.write(w.hash.digest())
        os.replace(tmp, target)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise


def _runs(pagemap: bytes, npages: int) -> list[tuple[int, int]]:
    """(first page, count) of each run of pages the map marks."""
    bits = int.from_bytes(pagemap, "little")
    runs: list[tuple[int, int]] = []
    p = 0
    while bits >> p:
        p += ((bits >> p) & -(bits >> p)).bit_length() - 1  # skip to the next set bit
        n = ((~bits >> p) & -(~bits >> p)).bit_length() - 1  # length of the run
        runs.append((p, n))
        p += n
    assert not runs or runs[-1][0] + runs[-1][1] <= npages
    return runs


class _Parser:
    def __init__(self, data: memoryview, path: str) -> None:
        self.data = data
        self.pos = 0
        self.path = path

    def fail(self, why: str) -> InvalidSnapshotFile:
        return InvalidSnapshotFile(f"{self.path}: {why}")

    def take(self, n: int, what: str) -> memoryview:
        if n > len(self.data) - self.pos:
            raise self.fail(f"{what} ({n} bytes at offset {self.pos}) runs past the end of the file")
        part = self.data[self.pos : self.pos + n]
        self.pos += n
        return part

    def part(self, fmt: str, what: str, limit: int) -> memoryview:
        size = struct.calcsize(fmt)
        (n,) = struct.unpack(fmt, self.take(size, f"the length of {what}"))
        if n > limit:
            raise self.fail(f"{what} is {n} bytes, more than the limit of {limit}")
        return self.take(n, what)


#: No valid file is larger: all of the largest guest memory, plus the rest.
_MAX_FILE = 256 * 1024 * 1024 + (8 << 20)


def load(path: str | os.PathLike[str]) -> Snapshot:
    name = os.fspath(path)
    # O_NONBLOCK: opening a FIFO for reading would otherwise wait for a
    # writer forever; anything but a regular file is refused below.
    fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
    try:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            raise InvalidSnapshotFile(f"{name}: not a regular file")
        if info.st_size > _MAX_FILE:
            raise InvalidSnapshotFile(f"{name}: {info.st_size} bytes is larger than any snapshot file")
        chunks = []
        left = _MAX_FILE + 1
        while left > 0 and (chunk := os.read(fd, min(left, 1 << 20))):
            chunks.append(chunk)
            left -= len(chunk)
        data = b"".join(chunks)
    finally:
        os.close(fd)
    if len(data) > _MAX_FILE:
        raise InvalidSnapshotFile(f"{name}: larger than any snapshot file")
    view = memoryview(data)
    if len(data) < len(MAGIC) or data[: len(MAGIC)] != MAGIC:
        raise InvalidSnapshotFile(f"{name}: not a snapshot file (no aionub snapshot header)")
    if len(data) < _HEAD.size + _DIGEST:
        raise InvalidSnapshotFile(f"{name}: truncated ({len(data)} bytes)")
    (version,) = struct.unpack_from("<I", data, len(MAGIC))
    if version != VERSION:
        raise InvalidSnapshotFile(f"{name}: snapshot file version {version}; this aionub reads version {VERSION}")
    # The checksum first: nothing else is believed before it matches.
    if hashlib.sha256(view[:-_DIGEST]).digest() != data[-_DIGEST:]:
        raise InvalidSnapshotFile(f"{name}: the file is truncated or was altered (its SHA-256 checksum does not match)")
    p = _Parser(view[:-_DIGEST], name)
    head = _HEAD.unpack(p.take(_HEAD.size, "the header"))
    _, _, flags, image_sha256 = head[:4]
    if flags:
        raise p.fail(f"unknown flags 0x{flags:x}")
    layout = ffi.new("struct ab_layout *")
    for field, value in zip(_LAYOUT_FIELDS, head[4:], strict=True):
        setattr(layout, field, value)
    try:
        label = str(p.part("<I", "the guest's name", 800), "utf-8")
    except UnicodeDecodeError:
        raise p.fail("the guest's name is not UTF-8") from None
    if not label or not label.isprintable():
        raise p.fail(f"the guest's name {label!r} is empty or not printable")
    ready = bytes(p.part("<I", "the READY record", int(layout.output_size)))
    try:
        decode_ready(memoryview(ready), len(ready))
    except GuestProtocolError as exc:
        raise p.fail(f"the READY record is malformed: {exc}") from None
    state = p.part("<I", "the vCPU state", 1 << 21)
    pagemap = p.part("<I", "the page map", 1 << 20)
    pages = p.part("<Q", "the pages", len(data))
    if p.pos != len(p.data):
        raise p.fail(f"{len(p.data) - p.pos} unexpected bytes after the pages")
    probe_kvm()  # KvmUnavailable, not a complaint about the file
    out = ffi.new("ab_snapshot **")
    buf = ffi.new("char[]", _ERRLEN)
    rc = lib.ab_snapshot_import(
        layout, image_sha256, ffi.from_buffer(state), len(state), ffi.from_buffer(pagemap), len(pagemap),
        ffi.from_buffer(pages), len(pages), out, buf, _ERRLEN,
    )
    if rc < 0:
        message = ffi.string(buf).decode("utf-8", "replace") or os.strerror(-rc)
        if message.startswith("config: "):
            message = message[8:]
        raise p.fail(message)
    ptr: Any = ffi.gc(out[0], lib.ab_snapshot_free)
    return Snapshot(ptr, label, ready)
