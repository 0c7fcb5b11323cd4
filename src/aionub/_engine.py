"""The engine behind a Sandbox: the one owner of its native object, its
event-loop bindings and its lifecycle (``_lifecycle.py``). It runs the
commands — creation, calls, runs, snapshots, restores — on the vCPU thread
and tears everything down.

Ownership: only the engine holds the ``NativeSandbox``; bindings borrow it
and are closed before it is released, and it is released only when no
command is in flight, so nothing ever touches a freed native object.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Awaitable, Callable
from typing import Any

import anyio

from . import _abi, _native
from ._binding import Binding, Deferred, deliver, new_binding, running_loop, sleep_through
from ._config import SandboxConfig
from ._coredump import write_core
from ._debug import DebugTarget, resume_without_debugger
from ._errors import event_error
from ._exceptions import (
    GuestProtocolError,
    InvalidGuest,
    SandboxClosed,
    SandboxError,
)
from ._hostcalls import GuestServices, HostFunction
from ._lifecycle import Lifecycle, State
from ._limits import CallLimits
from ._native import (
    CMD_RESUME,
    EV_CPU_TIMEOUT,
    EV_DEBUG_STOP,
    EV_HOSTCALL,
    EV_LOG,
    EV_READY,
    EV_RESULT,
    EV_SPAWNED,
    EV_SYS,
    EV_TIMEOUT,
    NativeSandbox,
    lib,
)
from ._results import decode_result
from ._run import RunResult, decode_exit
from ._syscalls import FileProvider, RunIO
from ._telemetry import Telemetry
from ._wire import GuestFunction, decode_ready, ready_table

__all__ = ("Engine", "fork_generation", "now")

log = logging.getLogger("aionub")

# Sandboxes belong to the process that created them: a forked child has the
# memory but not the vCPU threads. Bumped in the child after every fork.
_fork_generation = 0


def _after_fork_in_child() -> None:
    global _fork_generation
    _fork_generation += 1


os.register_at_fork(after_in_child=_after_fork_in_child)


def fork_generation() -> int:
    return _fork_generation


class Engine:
    __slots__ = (
        "native", "ih", "config", "lifecycle", "binding", "services", "functions", "has_main",
        "input_used", "limits", "label", "generation", "at_snapshot", "boot_snapshot",
        "image_sha256", "counted", "ready", "debugger", "last_core",
    )

    def __init__(
        self,
        native: NativeSandbox,
        config: SandboxConfig,
        host_functions: dict[str, HostFunction],
        label: str,
        sandbox_id: int,
        files: FileProvider | None = None,
    ) -> None:
        self.native: NativeSandbox | None = native
        self.ih = native.interrupt()
        self.config = config
        self.label = label
        self.lifecycle = Lifecycle(f"sandbox {sandbox_id}")
        self.binding: Binding | None = None
        self.services = GuestServices(
            host_functions, sandbox_id, config.output_size, config.max_log_bytes, files
        )
        self.functions: dict[str, GuestFunction] = {}
        self.has_main = False  # the guest defines main(): Sandbox.run() works
        # High-water mark of the host's writes into the input buffer since
        # the last snapshot/restore (KVM's dirty log does not see them).
        self.input_used = 0
        self.limits: CallLimits | None = None  # those of the call in progress
        self.generation = _fork_generation
        # The native snapshot that guest state equals, if no call has run
        # since it was taken or restored (the pool re-issues a sandbox only
        # then).
        self.at_snapshot: Any = None
        # For guests with main(): the state right after start-up, which
        # every run starts from (like exec'ing a fresh process).
        self.boot_snapshot: Any = None
        self.image_sha256 = native.digest.hex()[:16]  # names the image in telemetry
        # The guest's READY record: snapshots carry it to spawned sandboxes.
        self.ready = b""
        # The telemetry that counts this sandbox among those alive (its
        # close must be counted by the same instrument).
        self.counted: Telemetry | None = None
        # The debug target while a gdb client is attached (_debug.py).
        self.debugger: DebugTarget | None = None
        # The crash dump the last call that failed wrote, if any.
        self.last_core: str | None = None

    def counted_by(self, tel: Telemetry) -> None:
        self.counted = tel
        tel.sandboxes.add(1)

    def _closed(self) -> None:
        self.lifecycle.closed()
        tel, self.counted = self.counted, None
        if tel is not None:
            tel.sandboxes.add(-1)

    # ---- checks -------------------------------------------------------------------------

    def check_open(self) -> None:
        self.lifecycle.check_open()
        self._check_process()

    def check_usable(self) -> None:
        """Open and not poisoned (on the call path: one check of each)."""
        self.lifecycle.check_usable()
        self._check_process()

    def _check_process(self) -> None:
        if self.generation != _fork_generation:
            raise SandboxError(
                f"{self.lifecycle.label} belongs to the parent process; a forked child must create its own"
            )

    # ---- bindings ----------------------------------------------------------------------

    def bind(self) -> Binding:
        """The binding for the running event loop (made on first use). A
        sandbox may move between loops, but not while a command is in
        flight on another one: that command's owner still waits on it."""
        loop = running_loop()
        binding = self.binding
        if binding is not None and binding.loop is loop:
            return binding
        native = self.native
        if native is None:
            raise SandboxClosed(f"{self.lifecycle.label} is closed")
        if binding is not None and self.lifecycle.command is not None:
            raise SandboxError(
                f"{self.lifecycle.label} is running {self.lifecycle.command} on another event loop"
            )
        new = new_binding(native)
        if binding is not None:
            binding.close()
        self.binding = new
        return new

    # ---- creation ----------------------------------------------------------------------

    async def boot(self) -> None:
        """The creation command: run the guest until it is ready."""
        native = self.native
        assert native is not None
        binding = self.bind()
        binding.submit(lib.ab_sandbox_start)
        try:
            kind, timed_out = await binding.with_timeout(
                lambda: self.drive(binding, "initialisation"), self.config.init_timeout
            )
        except InvalidGuest:
            raise
        except SandboxError as exc:
            if native.event.kind == _native.EV_CREATE_FAILED:
                raise  # the host could not create the VM (VmError): not the guest's fault
            raise InvalidGuest(f"guest {self.label} failed during initialisation: {exc}") from exc
        finally:
            self.services.finish_call()  # output lines start-up left unfinished
        if timed_out:
            raise InvalidGuest(f"guest {self.label} did not become ready within {self.config.init_timeout} s")
        if kind != EV_READY:
            raise InvalidGuest(f"guest {self.label} returned a result before it was ready")
        try:
            self.functions, flags = decode_ready(native.output, native.event.length)
            self.has_main = bool(flags & _abi.READY_HAS_MAIN)
        except GuestProtocolError as exc:
            raise InvalidGuest(f"guest {self.label}: {exc}") from None
        self.ready = bytes(native.output[: native.event.length])
        self.lifecycle.end()
        if self.has_main:
            # Sparse (only pages written so far) and, being the current
            # state, free to hand out again (snapshot() below).
            self.boot_snapshot = await self.snapshot()

    async def boot_spawned(self, snapshot_ptr: Any, ready: bytes) -> None:
        """The creation command of a spawned sandbox: the vCPU thread
        creates the VM and loads the snapshot's vCPU state (no guest code
        runs). The sandbox is then exactly at the snapshot; for a guest
        with main(), every run starts from it."""
        native = self.native
        assert native is not None
        binding = self.bind()
        binding.submit(lib.ab_sandbox_start)
        # Keeps the snapshot alive until the vCPU thread has loaded it.
        kind, deferred = await binding.finish()
        if kind != EV_SPAWNED:
            raise event_error(kind, native.event, native.output, native.layout)
        functions, flags = ready_table(ready)  # decoded once per snapshot
        self.functions = dict(functions)
        self.has_main = bool(flags & _abi.READY_HAS_MAIN)
        self.ready = ready
        self.at_snapshot = snapshot_ptr
        if self.has_main:
            self.boot_snapshot = snapshot_ptr
        self.lifecycle.end()
        await deliver(deferred)

    # ---- calls --------------------------------------------------------------------------

    async def call(self, binding: Binding, fn: GuestFunction, request: bytes, limits: CallLimits) -> Any:
        """One call; the caller holds ``binding.lock``."""
        self.lifecycle.begin(f"{fn.name}()")
        self.at_snapshot = None
        try:
            native = await self.exchange(binding, request, limits, None, f"{fn.name}()")
            try:
                value = decode_result(fn, native.output, native.event.length, self.label)
            except GuestProtocolError as exc:
                self.poison(str(exc))
                raise
            self.services.end_call()
            return value
        finally:
            self.services.finish_call()
            self.lifecycle.end()

    # ---- runs ---------------------------------------------------------------------------

    async def run(
        self, binding: Binding, args: tuple[str, ...], request: bytes, stdin: bytes, limits: CallLimits
    ) -> RunResult:
        """One run of main(); the caller holds ``binding.lock``. Restores
        the boot snapshot first unless the sandbox is exactly at it (which
        also clears poisoning): state left by earlier calls and runs is
        discarded."""
        what = f"the run of {args[0]}"
        if self.at_snapshot is not self.boot_snapshot:
            await self.restore_locked(binding, self.boot_snapshot)
        self.lifecycle.begin(what)
        self.at_snapshot = None
        io = RunIO(stdin, self.config.max_output_bytes)
        try:
            native = await self.exchange(binding, request, limits, io, what)
            try:
                code = decode_exit(native.output, native.event.length, args[0])
            except GuestProtocolError as exc:
                self.poison(str(exc))
                raise
            self.services.end_call()
            return RunResult(
                args, code, bytes(io.stdout), bytes(io.stderr), io.stdout_truncated, io.stderr_truncated
            )
        finally:
            self.services.finish_call()
            self.lifecycle.end()

    async def exchange(
        self, binding: Binding, request: bytes, limits: CallLimits, io: RunIO | None, what: str
    ) -> NativeSandbox:
        """Write a call or run request, run the guest until its RESULT and
        return the native sandbox, whose output buffer holds the record. The
        caller holds ``binding.lock`` and has begun the lifecycle command.
        The C core enforces ``limits`` (native/limits.c)."""
        native = self.native
        assert native is not None
        native.input[: len(request)] = request
        if len(request) > self.input_used:
            self.input_used = len(request)
        self.limits = limits
        self.services.begin_call(io)
        binding.submit(lib.ab_sandbox_submit_call, limits.deadline_ns, limits.cpu_ns)
        if await self.drive(binding, what) != EV_RESULT:
            # drive() also returns on READY, which only creation expects:
            # a guest that signals READY again mid-call broke the protocol
            # (its output buffer is not this request's result).
            self.poison(f"{what} signalled READY instead of returning a result")
            during = what if io is not None else f"a call to {what}"
            raise GuestProtocolError(f"the guest signalled READY during {during}")
        return native

    async def drive(self, binding: Binding, what: str) -> int:
        """Run the guest until it returns (RESULT or READY), serving log
        records and host calls on the way. Anything else, and any exception
        or cancellation while the guest is mid-call, poisons the sandbox;
        the vCPU is stopped before the exception propagates."""
        native = self.native
        assert native is not None
        services = self.services
        in_flight = True
        try:
            while True:
                kind = await binding.wait()
                in_flight = False
                if kind == EV_RESULT or kind == EV_READY:
                    return kind
                if kind == EV_LOG:
                    services.emit_log(native.output, native.event.length)
                elif kind == EV_HOSTCALL:
                    if self.lifecycle.command == "initialisation":
                        # Host functions serve calls (docs/abi.md); a guest
                        # asking for one while it starts up is not in one.
                        raise GuestProtocolError(f"the guest called a host function during {what}")
                    await self._host_work(binding, services.serve_host_call, native.output, native.event.length, what)
                    await self._check_deadline(binding, what)
                elif kind == EV_SYS:
                    await self._host_work(binding, services.sys.serve, native.output, native.event.length, what)
                    await self._check_deadline(binding, what)
                elif kind == EV_DEBUG_STOP:
                    await self._debug_stop(binding)
                elif kind == EV_TIMEOUT or kind == EV_CPU_TIMEOUT:
                    error = self._limit_error(kind, what)
                    self._dump_core(error)
                    raise error
                else:
                    error = self._event_error(kind)
                    if self.debugger is not None:
                        await self.debugger.crashed(error)  # gdb sees the signal first
                    self._dump_core(error)
                    raise error
                if self.lifecycle.is_closed:
                    raise SandboxClosed(f"{self.lifecycle.label} was closed during {what}")
                binding.submit(lib.ab_sandbox_submit, CMD_RESUME)
                in_flight = True
        except BaseException as exc:
            if in_flight:
                kind, _ = await binding.stop(self.ih, self.config.interrupt_retry_delay)
                # A cancellation deferred by stop() is subsumed by the one
                # being raised (exc arrived while the guest ran: a
                # cancellation, a timeout or an interrupt).
                if kind == EV_RESULT:
                    raise  # the guest finished before the kill landed: its state is intact
                self._dump_core(exc)
            self.poison(f"{what} did not run to completion ({type(exc).__name__}: {exc})")
            raise

    async def _host_work(
        self, binding: Binding, serve: Callable[[memoryview, int], Awaitable[None]], output: memoryview, length: int,
        what: str,
    ) -> None:
        """Serve a host call or system request; with a ``timeout=``, only
        until its deadline (an ``async def`` host function is cancelled
        then). The kernel's timer stops only a running guest, so host time
        is cut here."""
        limits = self.limits
        if limits is None or limits.loop_deadline is None:
            await serve(output, length)
            return
        _, expired = await binding.with_deadline(lambda: serve(output, length), limits.loop_deadline)
        if expired:
            await limits.not_before_deadline()
            self.poison(limits.poison_reason(what))
            raise limits.timeout_error(what)

    async def _debug_stop(self, binding: Binding) -> None:
        """The guest paused for a debugger (AB_EV_DEBUG_STOP). With a gdb
        client attached, hold it until the client resumes it, with the
        call's deadline stopped meanwhile; without one, resume at once
        (docs/debugging.md). Either way the guest is resumed by drive()."""
        native = self.native
        assert native is not None
        debugger = self.debugger
        if debugger is None:
            resume_without_debugger(native, self.ih)
            return
        left = binding.pause_deadline()
        paused_at = now()
        try:
            await debugger.paused()
        finally:
            # The kernel's deadline was paused by the vCPU thread with the
            # stop (limits.c) and resumes with the guest.
            limits = self.limits
            if limits is not None and limits.loop_deadline is not None:
                limits.loop_deadline += now() - paused_at
            binding.resume_deadline(left)

    def _dump_core(self, exc: BaseException) -> None:
        """Write a crash dump if configured (core_dir or AIONUB_CORE_DIR)
        and name it in the exception. Only while the vCPU is stopped."""
        self.last_core = None
        directory = self.config.core_dir or os.environ.get("AIONUB_CORE_DIR") or None
        native = self.native
        if directory is None or native is None:
            return
        try:
            path = write_core(native, directory, self.label, signal_for(exc))
        except (OSError, SandboxError) as err:
            log.warning("sandbox %s: cannot write a crash dump to %s: %s", self.lifecycle.label, directory, err)
            return
        self.last_core = path
        note_core(exc, path)

    async def _check_deadline(self, binding: Binding, what: str) -> None:
        """[H1] A deadline that passed, or a cancellation that arrived, while
        the host worked for the guest (a sync host function blocking the
        loop, a system request) takes effect here: the guest is never
        resumed after it."""
        limits = self.limits
        if limits is not None and limits.loop_deadline is not None and now() >= limits.loop_deadline:
            raise limits.timeout_error(what)
        await binding.checkpoint_if_cancelled()

    def _limit_error(self, kind: int, what: str) -> SandboxError:
        """The exception for a call the kernel stopped at one of its limits
        (TIMEOUT, CPU_TIMEOUT), which poisons the sandbox."""
        limits = self.limits
        if kind == EV_TIMEOUT and limits is not None and limits.timeout is not None:
            self.poison(limits.poison_reason(what))
            return limits.timeout_error(what)
        native = self.native
        if kind == EV_CPU_TIMEOUT and limits is not None and limits.cpu_timeout is not None and native is not None:
            self.poison(limits.poison_reason(what, cpu=True))
            return limits.cpu_error(what, int(native.event.detail))
        return self._event_error(kind)  # a limit the call did not have: unexpected

    def _event_error(self, kind: int) -> SandboxError:
        native = self.native
        assert native is not None
        if self.lifecycle.is_closed and kind == _native.EV_CANCELLED:
            return SandboxClosed(f"{self.lifecycle.label} was closed while a call was running")
        return event_error(kind, native.event, native.output, native.layout)

    def poison(self, reason: str) -> None:
        if self.lifecycle.poison is None:
            self.lifecycle.set_poison(reason)
            log.debug("sandbox %s poisoned: %s", self.lifecycle.label, reason)

    # ---- snapshots ----------------------------------------------------------------------

    async def snapshot(self) -> Any:
        """Take a snapshot: the native result, freed by the GC. If guest
        state still equals a snapshot (nothing ran since it was taken or
        restored), that one is handed out again: it is exact, and restores
        between the two stay on the fast path."""
        self.check_usable()
        binding = self.bind()
        async with binding.lock:
            if self.at_snapshot is not None:
                self.lifecycle.check_usable()  # closed while we waited for the lock?
                return self.at_snapshot
            self.lifecycle.begin("snapshot()")
            deferred: Deferred = None
            try:
                native = self.native
                assert native is not None
                binding.submit(lib.ab_sandbox_submit_snapshot, self.input_used, self.services.output_used)
                _, deferred = await binding.finish()
                ptr = native.take_snapshot_result()
                self.input_used = self.services.output_used = 0
                self.at_snapshot = ptr
            finally:
                self.lifecycle.end()
            await deliver(deferred)
            return ptr

    async def restore(self, snapshot_ptr: Any) -> None:
        """Restore a snapshot; clears poisoning when it succeeds. Runs to
        the end even if the caller is cancelled meanwhile (then the
        cancellation is raised afterwards, with the sandbox restored)."""
        self.check_open()
        binding = self.bind()
        async with binding.lock:
            await self.restore_locked(binding, snapshot_ptr)

    async def restore_locked(self, binding: Binding, snapshot_ptr: Any) -> None:
        """restore() for a caller that holds ``binding.lock``."""
        self.lifecycle.begin("restore()", restoring=True)
        deferred: Deferred = None
        restored = False
        self.at_snapshot = None
        try:
            native = self.native
            assert native is not None
            binding.submit(lib.ab_sandbox_submit_restore, snapshot_ptr, self.input_used, self.services.output_used)
            _, deferred = await binding.finish()
            try:
                native.check_restored()
            except ValueError:
                raise  # refused before anything changed: the state is as it was
            except SandboxError as exc:
                self.poison(f"restore() failed: {exc}")
                raise
            self.input_used = self.services.output_used = 0
            self.at_snapshot = snapshot_ptr
            restored = True
        finally:
            self.lifecycle.end(restored=restored)
        await deliver(deferred)

    # ---- closing -------------------------------------------------------------------------

    async def aclose(self) -> None:
        """Close: stop the command in flight, wait until its owner is done
        with it, have the vCPU thread tear the VM down, release everything.
        Runs to the end whatever happens to the calling task; a cancellation
        that arrived meanwhile is raised afterwards."""
        if self.generation != _fork_generation:
            self.release_fork_copy()
            return
        lifecycle = self.lifecycle
        delay = self.config.interrupt_retry_delay
        deferred: Deferred = None
        if not lifecycle.start_closing():
            # Another aclose() owns the teardown: wait for it to finish (also
            # when cancelled: once any aclose() returns, the sandbox is closed).
            while lifecycle.state is not State.CLOSED:
                deferred = await sleep_through(delay) or deferred
            await deliver(deferred)
            return
        # Stop the command in flight: kill the guest (the call then raises
        # SandboxClosed), stop an async host function it waits for, and
        # re-kick until its owner has ended the command. Snapshots and
        # restores end by themselves. The owner's waits defer cancellation,
        # so it always gets there.
        while lifecycle.command is not None:
            lib.ab_interrupt_cancel(self.ih)
            self.services.cancel_host_call()
            if self.debugger is not None:
                self.debugger.detach()  # a call held at a gdb stop runs on (and sees the close)
            deferred = await sleep_through(delay) or deferred
        deferred = await self._teardown() or deferred
        log.debug("closed sandbox %s", lifecycle.label)
        await deliver(deferred)

    async def _teardown(self) -> Deferred:
        """Release everything without blocking the event loop: the vCPU
        thread tears its VM down (about half a millisecond here) while the
        loop waits for its event; joining the exited thread is then
        immediate. Falls back to a blocking release if that cannot start."""
        deferred: Deferred = None
        native = self.native
        if native is not None:
            binding = self.bind()
            # placement="colocate" pinned this (the submitting) thread: unpin it.
            lib.ab_sandbox_release_placement(native.ptr)
            native.drop_views()  # no view of guest memory may outlive the VM
            try:
                binding.submit(lib.ab_sandbox_submit_teardown)
            except OSError:
                pass  # never started: the release below does it all
            else:
                _, deferred = await binding.finish()
            self.native = None
            ptr = native.detach()
            self._close_binding()  # before the release: bindings borrow the native sandbox
            _native.ffi.release(ptr)  # joins the vCPU thread and frees the rest
        self._close_binding()
        self._closed()
        return deferred

    def _close_binding(self) -> None:
        binding, self.binding = self.binding, None
        if binding is not None:
            binding.close()

    def release_now(self) -> None:
        """Release everything now, blocking until the vCPU thread has
        exited: for a failed creation and for the garbage collector."""
        native, self.native = self.native, None
        self._close_binding()
        if native is not None:
            native.destroy()
        if self.lifecycle.state is not State.CLOSED:
            if self.lifecycle.state is not State.CLOSING:
                self.lifecycle.start_closing()
            self._closed()

    def release_fork_copy(self) -> None:
        """Close a forked child's copy of a parent's sandbox. The vCPU
        thread, any call it is running and the event loop's registration of
        the eventfd all belong to the parent: waiting for that call would
        never end, and unregistering the eventfd from the epoll instance
        (which parent and child share) would leave the parent's sandbox
        waiting forever. So only this process's mappings and descriptors
        are dropped."""
        native, self.native = self.native, None
        if native is not None:
            native.destroy()  # ab_sandbox_destroy() unmaps only, in a child
        binding, self.binding = self.binding, None
        if binding is not None:
            os.close(binding.fd)
        if self.lifecycle.state is not State.CLOSED:
            if self.lifecycle.state is not State.CLOSING:
                self.lifecycle.start_closing()
            self._closed()


def signal_for(exc: BaseException) -> int:
    """The POSIX signal a crash dump records for how a call ended."""
    from ._exceptions import GuestAborted, GuestFault

    if isinstance(exc, GuestFault):
        # #DE, #MF, #XM: SIGFPE; #UD: SIGILL; #DB, #BP: SIGTRAP; else SIGSEGV.
        return {0: 8, 6: 4, 16: 8, 19: 8, 1: 5, 3: 5}.get(exc.vector if exc.vector is not None else -1, 11)
    if isinstance(exc, GuestAborted):
        return 6  # SIGABRT
    return 9  # SIGKILL: stopped by a kill, a timeout or a cancellation


def note_core(exc: BaseException, path: str) -> None:
    """Name the crash dump in the exception (attribute and note)."""
    try:
        exc.core_file = path  # type: ignore[attr-defined]
    except AttributeError:
        pass
    exc.add_note(f"crash dump: {path}")


def now() -> float:
    """The running loop's clock (deadlines are measured on it)."""
    loop = running_loop()
    return loop.time() if loop is not None else anyio.current_time()
