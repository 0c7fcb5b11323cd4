"""The one layer that touches the cffi module: typed wrappers that check
return codes and turn them into exceptions in one place."""

from __future__ import annotations

import errno
import hashlib
import os
from typing import Any

from ._aionub_native import ffi, lib  # type: ignore[import-not-found]
from ._exceptions import InvalidGuest, KvmUnavailable, SandboxError

__all__ = ("ffi", "lib", "NativeSandbox", "probe_kvm", "process_stats", "snapshot_digest")

_ERRLEN = 512

EV_READY = lib.AB_EV_READY
EV_RESULT = lib.AB_EV_RESULT
EV_HOSTCALL = lib.AB_EV_HOSTCALL
EV_LOG = lib.AB_EV_LOG
EV_ABORT = lib.AB_EV_ABORT
EV_FAULT = lib.AB_EV_FAULT
EV_CANCELLED = lib.AB_EV_CANCELLED
EV_VM_ERROR = lib.AB_EV_VM_ERROR
EV_CREATE_FAILED = lib.AB_EV_CREATE_FAILED
EV_SNAPSHOT = lib.AB_EV_SNAPSHOT
EV_RESTORED = lib.AB_EV_RESTORED
EV_TORN_DOWN = lib.AB_EV_TORN_DOWN
EV_SYS = lib.AB_EV_SYS
EV_TIMEOUT = lib.AB_EV_TIMEOUT
EV_CPU_TIMEOUT = lib.AB_EV_CPU_TIMEOUT
EV_SPAWNED = lib.AB_EV_SPAWNED
EV_DEBUG_STOP = lib.AB_EV_DEBUG_STOP
STOP_INTERRUPT = lib.AB_STOP_INTERRUPT
STOP_BREAKPOINT = lib.AB_STOP_BREAKPOINT
STOP_STEP = lib.AB_STOP_STEP
CMD_CALL = lib.AB_CMD_CALL
CMD_RESUME = lib.AB_CMD_RESUME
EXIT_SHUTDOWN = lib.AB_EXIT_SHUTDOWN
EAGAIN = -errno.EAGAIN

STATS_FIELDS = (
    "calls", "runs", "cancellations", "signals_sent", "stale_kicks", "sys_fast", "timeouts",
    "cpu_timeouts", "pins", "unpins", "spreads",
)


def _message(buf: Any) -> str:
    return ffi.string(buf).decode("utf-8", "replace")  # type: ignore[no-any-return]


def probe_kvm() -> None:
    """Raise KvmUnavailable unless /dev/kvm can be used."""
    buf = ffi.new("char[]", _ERRLEN)
    rc = lib.ab_kvm_probe(buf, _ERRLEN)
    if rc < 0:
        raise KvmUnavailable(_message(buf) or os.strerror(-rc))


def _stats_dict(stats: Any) -> dict[str, int]:
    return {name: int(getattr(stats, name)) for name in STATS_FIELDS}


def process_stats() -> dict[str, int]:
    stats = ffi.new("struct ab_stats *")
    lib.ab_process_stats(stats)
    return _stats_dict(stats)


def _raise_create_error(rc: int, message: str) -> None:
    if message.startswith("config: "):
        raise ValueError(message[8:])
    raise OSError(-rc, message or os.strerror(-rc))


def snapshot_digest(snapshot_ptr: Any) -> bytes:
    """The SHA-256 digest of the guest image a native snapshot was taken from."""
    out = ffi.new("uint8_t[32]")
    lib.ab_snapshot_image_sha256(snapshot_ptr, out)
    return bytes(ffi.buffer(out))


def _command_error(event: Any, what: str) -> Exception:
    rc = int(event.error)
    message = _message(event.message)
    if rc == -errno.EINVAL:
        return ValueError(f"cannot {what}: {message}")
    return SandboxError(f"cannot {what}: {message or os.strerror(-rc)}")


class NativeSandbox:
    """Owns one ``ab_sandbox``: its guest memory views, event record and
    interrupt handle. Freed by :meth:`destroy` (or by the GC as a last
    resort; destroy blocks until the vCPU thread has exited)."""

    __slots__ = ("ptr", "event", "layout", "memory", "input", "output", "_ih", "digest")

    def __init__(self, config: Any, image: bytes) -> None:
        probe_kvm()
        out = ffi.new("ab_sandbox **")
        buf = ffi.new("char[]", _ERRLEN)
        # The image's identity, which restore() checks a snapshot against:
        # a collision-resistant digest, since images come from tenants.
        digest = hashlib.sha256(image).digest()
        rc = lib.ab_sandbox_create(config, image, len(image), digest, out, buf, _ERRLEN)
        if rc < 0:
            message = _message(buf)
            if message.startswith("elf: "):
                raise InvalidGuest(message[5:])
            _raise_create_error(rc, message)
        self._attach(out[0], digest)

    @classmethod
    def spawn(cls, config: Any, snapshot_ptr: Any) -> NativeSandbox:
        """A sandbox whose memory is ``snapshot_ptr``'s, mapped
        copy-on-write, and whose vCPU state the start command loads."""
        probe_kvm()
        out = ffi.new("ab_sandbox **")
        buf = ffi.new("char[]", _ERRLEN)
        rc = lib.ab_sandbox_spawn(config, snapshot_ptr, out, buf, _ERRLEN)
        if rc < 0:
            _raise_create_error(rc, _message(buf))
        self = cls.__new__(cls)
        self._attach(out[0], snapshot_digest(snapshot_ptr))
        return self

    def _attach(self, ptr: Any, digest: bytes) -> None:
        self.digest = digest
        self.ptr = ffi.gc(ptr, lib.ab_sandbox_destroy)
        self.event = lib.ab_sandbox_event(self.ptr)
        layout = ffi.new("struct ab_layout *")
        lib.ab_sandbox_layout(self.ptr, layout)
        self.layout = layout
        # SAFETY: these views alias guest memory; they are only used while
        # the vCPU is stopped and are dropped in destroy() before the memory
        # is unmapped.
        self.memory = ffi.buffer(lib.ab_sandbox_memory(self.ptr), layout.memory_size)
        mv = memoryview(self.memory)
        self.input = mv[layout.input_addr : layout.input_addr + layout.input_size]
        self.output = mv[layout.output_addr : layout.output_addr + layout.output_size]
        self._ih = None

    def start(self, notify_fd: int) -> None:
        rc = lib.ab_sandbox_start(self.ptr, notify_fd)
        if rc < 0:
            raise OSError(-rc, f"cannot start the vCPU: {os.strerror(-rc)}")

    def enable_debug(self) -> None:
        """Before start(): int3 and single-step traps pause the guest for a
        debugger instead of faulting (native/debug.c)."""
        rc = lib.ab_sandbox_enable_debug(self.ptr)
        if rc < 0:
            raise OSError(-rc, f"cannot enable debugging: {os.strerror(-rc)}")

    def interrupt(self) -> Any:
        """A new reference to the interrupt handle, released by the GC."""
        return ffi.gc(lib.ab_sandbox_interrupt(self.ptr), lib.ab_interrupt_release)

    def stats(self) -> dict[str, int]:
        stats = ffi.new("struct ab_stats *")
        lib.ab_sandbox_stats(self.ptr, stats)
        return _stats_dict(stats)

    def take_snapshot_result(self) -> Any:
        """The snapshot the last SNAPSHOT command produced (freed by the GC),
        or raise the error it reported."""
        event = self.event
        ptr = lib.ab_sandbox_snapshot_result(self.ptr)
        if ptr == ffi.NULL:
            raise _command_error(event, "snapshot")
        return ffi.gc(ptr, lib.ab_snapshot_free)

    def check_restored(self) -> None:
        if self.event.error:
            raise _command_error(self.event, "restore")

    def drop_views(self) -> None:
        """Drop every view of guest memory (before the VM is torn down)."""
        if self.input is not None:
            for view in (self.input, self.output):
                view.release()
        self.event = self.memory = None
        self.input = self.output = None  # type: ignore[assignment]  # never used after this

    def detach(self) -> Any:
        """Drop every view of guest memory and hand back the pointer, whose
        release (``ffi.release``) stops the vCPU thread and frees everything;
        None if already detached."""
        ptr = self.ptr
        if ptr is None:
            return None
        self.drop_views()
        self.ptr = None
        return ptr

    def destroy(self) -> None:
        """Stop the vCPU thread and free everything now. Idempotent."""
        ptr = self.detach()
        if ptr is not None:
            ffi.release(ptr)  # runs ab_sandbox_destroy
