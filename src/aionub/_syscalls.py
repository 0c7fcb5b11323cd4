"""System requests (``AB_PORT_SYS``) that reach Python: output, input, the
read-only files of ``files=``, sleeping, and anything the C core does not
know. The C core answers the fast ones (clock, random, FS base) itself on
the vCPU thread (native/sysfast.c); docs/abi.md has the table.

Every request was written by the (hostile) guest: each operand is decoded
through ``_wire.Reader`` with bounds checks, and a request that is not
exactly its operands raises GuestProtocolError. Nothing here touches a host
file, socket or process: files come only from the caller's mapping.
"""

from __future__ import annotations

import errno
import logging
import posixpath
import struct
import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import anyio

from . import _abi
from ._exceptions import HostFunctionError, SandboxClosed, SandboxError
from ._limits import sleep_until_ns
from ._wire import Reader

if TYPE_CHECKING:
    from ._hostcalls import GuestServices

__all__ = ("FileProvider", "RunIO", "SystemServices", "check_files", "guest_path")

guest_log = logging.getLogger("aionub.guest")

#: Absolute guest paths to file contents; any Mapping (looked up with .get
#: at each request) works as a provider.
FileProvider = Mapping[str, Any]

PATH_MAX = 4096  # bytes, with the terminating NUL (Linux)
NAME_MAX = 255  # bytes per path component
_BYTES_LIKE = (bytes, bytearray, memoryview)
_I64 = struct.Struct("<q")
_Q = struct.Struct("<Q")
_STDOUT, _STDERR = 1, 2
_WRITE_LEVELS = {_STDOUT: logging.INFO, _STDERR: logging.WARNING}
_FAST_OPERANDS = {_abi.SYS_CLOCK: 4, _abi.SYS_RANDOM: 4, _abi.SYS_SET_FS: 8}
_OP_NAMES = {
    _abi.SYS_CLOCK: "CLOCK", _abi.SYS_RANDOM: "RANDOM", _abi.SYS_SET_FS: "SET_FS", _abi.SYS_WRITE: "WRITE",
    _abi.SYS_READ: "READ", _abi.SYS_STAT: "STAT", _abi.SYS_PREAD: "PREAD", _abi.SYS_SLEEP: "SLEEP",
}


def check_files(files: object) -> FileProvider | None:
    """Validate ``files=``: a Mapping of absolute guest paths to bytes-like
    contents. A dict is checked entry by entry now (and stays live: later
    changes are seen); another Mapping is a provider, checked at each
    lookup."""
    if files is None:
        return None
    if not isinstance(files, Mapping):
        raise TypeError(f"files must be a mapping of absolute guest paths to bytes, not {type(files).__name__}")
    if isinstance(files, dict):
        for path, data in files.items():
            if not isinstance(path, str):
                raise TypeError(f"files: paths must be str, got {path!r}")
            if not path.startswith("/") or "\x00" in path:
                raise ValueError(f"files: {path!r} is not an absolute path without NUL bytes")
            normal = guest_path(path)
            if normal != path:
                raise ValueError(f"files: path {path!r} is not normalised (write it as {normal!r})")
            if not isinstance(data, _BYTES_LIKE):
                raise TypeError(f"files: the contents of {path!r} must be bytes-like, not {type(data).__name__}")
    return files


def guest_path(path: str) -> str:
    """An absolute path in its normal form: ``posixpath.normpath``, with the
    leading ``//`` that POSIX lets it keep collapsed too."""
    normal = posixpath.normpath(path)
    if normal.startswith("//"):
        normal = "/" + normal.lstrip("/")
    return normal


@dataclass(slots=True)
class RunIO:
    """The standard streams of one run: stdin to read from, stdout and
    stderr captured up to ``limit`` bytes each (the rest is dropped)."""

    stdin: bytes
    limit: int
    pos: int = 0
    stdout: bytearray = field(default_factory=bytearray)
    stderr: bytearray = field(default_factory=bytearray)
    stdout_truncated: bool = False
    stderr_truncated: bool = False

    def capture(self, fd: int, data: bytes) -> None:
        buf = self.stdout if fd == _STDOUT else self.stderr
        room = self.limit - len(buf)
        if len(data) > room:
            data = data[: max(room, 0)]
            if fd == _STDOUT:
                self.stdout_truncated = True
            else:
                self.stderr_truncated = True
        buf += data

    def read(self, n: int) -> bytes:
        data = self.stdin[self.pos : self.pos + n]
        self.pos += len(data)
        return data


class SystemServices:
    """Serves one sandbox's system requests. Per-call state (the current
    run's streams, partial lines of a call's output) is reset by
    ``begin``; the log budget and the first host-side error belong to the
    owning GuestServices."""

    __slots__ = ("owner", "files", "run", "partial")

    def __init__(self, owner: GuestServices, files: FileProvider | None) -> None:
        self.owner = owner
        self.files = files
        self.run: RunIO | None = None
        # A call's output lines not yet ended by a newline, per fd.
        self.partial: dict[int, bytearray] = {_STDOUT: bytearray(), _STDERR: bytearray()}

    def begin(self, run: RunIO | None) -> None:
        self.run = run
        for buf in self.partial.values():
            buf.clear()

    def flush(self) -> None:
        """At the end of a call: log the partial lines still held."""
        for fd, buf in self.partial.items():
            if buf:
                self._log_line(fd, bytes(buf))
                buf.clear()

    # ---- dispatch ---------------------------------------------------------------------

    async def serve(self, output: memoryview, length: int) -> None:
        """Decode the request in ``output``, act, and write the reply there."""
        r = Reader(output, length, "system request")
        op = r.u32()
        name = _OP_NAMES.get(op)
        if name is not None:
            r.what = f"system request {name}"
        if op in _FAST_OPERANDS:
            # The C core serves these when they are exactly their operands,
            # so one that reaches us is malformed.
            if length - 4 != _FAST_OPERANDS[op]:
                raise r.fail(f"takes {_FAST_OPERANDS[op]} bytes of operands, got {length - 4}")
            raise SandboxError(f"internal error: the fast system request {name} reached Python")
        if op == _abi.SYS_WRITE:
            fd = r.u32()
            data = r.chunk(r.u32())
            r.done()
            self._reply(output, self._write(fd, data))
        elif op == _abi.SYS_READ:
            limit = r.u32()
            r.done()
            data = self.run.read(min(limit, self._room())) if self.run is not None else b""
            self._reply(output, len(data), data)
        elif op == _abi.SYS_STAT:
            path = _path(r)
            r.done()
            found = self._lookup(path)
            if isinstance(found, int):
                self._reply(output, found)
            else:
                self._reply(output, 0, _Q.pack(len(found)))
        elif op == _abi.SYS_PREAD:
            offset = r.u64()
            limit = r.u32()
            path = _path(r)
            r.done()
            found = self._lookup(path)
            if isinstance(found, int):
                self._reply(output, found)
            else:
                data = bytes(found[offset : offset + min(limit, self._room())]) if offset < len(found) else b""
                self._reply(output, len(data), data)
        elif op == _abi.SYS_SLEEP:
            ns = r.u64()
            r.done()
            await self._sleep(ns)
            self._reply(output, 0)
        else:
            self._reply(output, -errno.ENOSYS)  # a newer guest's request: it can fall back

    def _room(self) -> int:
        return self.owner.output_size - _abi.SYS_REPLY_HEADER

    def _reply(self, output: memoryview, result: int, data: bytes = b"") -> None:
        end = _abi.SYS_REPLY_HEADER + len(data)
        _I64.pack_into(output, 0, result)
        output[_abi.SYS_REPLY_HEADER : end] = data
        if end > self.owner.output_used:
            self.owner.output_used = end

    # ---- output -----------------------------------------------------------------------

    def _write(self, fd: int, data: bytes) -> int:
        if fd not in _WRITE_LEVELS:
            return -errno.EBADF
        if self.run is not None:
            self.run.capture(fd, data)
            return len(data)
        owner = self.owner
        owner.log_budget -= len(data)
        if owner.log_budget < 0:
            owner.log_dropped = True
            return len(data)  # dropped, as ab_log records over the budget are
        held = self.partial[fd]
        held += data
        *lines, rest = bytes(held).split(b"\n")
        for line in lines:
            self._log_line(fd, line)
        held[:] = rest
        return len(data)

    def _log_line(self, fd: int, line: bytes) -> None:
        sandbox_id = self.owner.sandbox_id
        text = line.decode("utf-8", "replace")
        guest_log.log(_WRITE_LEVELS[fd], "[sandbox %d] %s", sandbox_id, text, extra={"sandbox_id": sandbox_id})

    # ---- files --------------------------------------------------------------------------

    def _lookup(self, path: str) -> Any:
        """The contents of ``path``, or a negative errno for the guest. A
        provider that fails gives the guest -EIO and fails the call."""
        if not path:
            return -errno.ENOENT
        if not path.startswith("/"):
            return -errno.EINVAL  # no working directory to resolve it against
        if len(path.encode()) >= PATH_MAX or any(len(part.encode()) > NAME_MAX for part in path.split("/")):
            return -errno.ENAMETOOLONG
        if self.files is None:
            return -errno.ENOENT
        path = guest_path(path)
        try:
            data = self.files.get(path)
        except Exception as exc:
            self._provider_failed(f"the files provider failed for {path!r}: {type(exc).__name__}: {exc}", exc)
            return -errno.EIO
        if data is None:
            return -errno.ENOENT
        if not isinstance(data, _BYTES_LIKE):
            self._provider_failed(
                f"the files provider returned {type(data).__name__} for {path!r}, not bytes-like", None
            )
            return -errno.EIO
        if isinstance(data, memoryview) and (data.ndim != 1 or data.format not in ("B", "b", "c")):
            data = data.tobytes()  # len() and slices in bytes
        return data

    def _provider_failed(self, message: str, cause: BaseException | None) -> None:
        error = HostFunctionError(message)
        error.__cause__ = cause
        if self.owner.host_error is None:
            self.owner.host_error = error

    # ---- sleeping ---------------------------------------------------------------------

    async def _sleep(self, ns: int) -> None:
        """Sleep on the event loop, never less than asked on the guest's
        clock (the host's CLOCK_MONOTONIC; sleep_until_ns). A timeout or cancellation of the call
        interrupts it like an async host function (the guest is stopped
        already, so nothing is in flight); aclose() stops it through the
        same cancel scope."""
        owner = self.owner
        deadline = time.monotonic_ns() + ns
        with anyio.CancelScope() as scope:
            owner.host_call_scope = (scope, threading.get_ident())
            try:
                await sleep_until_ns(deadline)
            finally:
                owner.host_call_scope = None
        if scope.cancelled_caught:
            raise SandboxClosed(f"sandbox {owner.sandbox_id} was closed while the guest slept")


def _path(r: Reader) -> str:
    start = r.pos
    raw = r.raw()
    if b"\x00" in raw:
        raise r.fail(f"path at offset {start} contains a NUL byte")
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise r.fail(f"path at offset {start} is not valid UTF-8 ({exc.reason})") from None
