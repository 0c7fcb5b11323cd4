"""The debug target: what a debugger sees of one sandbox — its stops,
registers, memory at guest virtual addresses, breakpoints and single
steps — independent of any wire protocol (``_gdb.py`` speaks gdb's).

How the guest pauses (native/debug.c): breakpoints are int3 bytes written
into guest code, single steps are RFLAGS.TF, and a debug interrupt
(``kill_from_debugger``) is the seed's DEBUG_INTERRUPT bit. Each arrives as
an ``AB_EV_DEBUG_STOP`` event inside a call; the engine hands it to
:meth:`DebugTarget.paused`, which holds the call until the debugger resumes
it.

Stops, as the debugger sees them (all-stop: while it is stopped, the guest
never runs)::

    RUNNING ── breakpoint / step / interrupt in a call ──▶ STOPPED (in the call)
    RUNNING ── interrupt while no call runs ────────────▶ STOPPED (idle)
    RUNNING ── fault / abort in a call ─────────────────▶ STOPPED (final)
    STOPPED ── continue / step ─────────────────────────▶ RUNNING

An idle stop leaves DEBUG_INTERRUPT set, so a call that starts meanwhile
pauses at its first instruction ([T2]) and becomes the stop the debugger
already holds. A final stop cannot be resumed: continuing lets the call
end with its error.
"""

from __future__ import annotations

import enum
import struct
from collections.abc import Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import anyio

from ._exceptions import ExecutionCancelled, GuestFault, SandboxError
from ._native import STOP_BREAKPOINT, STOP_INTERRUPT, STOP_STEP, NativeSandbox, ffi, lib

if TYPE_CHECKING:
    from ._engine import Engine

__all__ = ("DebugTarget", "Stop", "resume_without_debugger", "SIGINT", "SIGTRAP")

SIGINT = 2
SIGTRAP = 5
RFLAGS_TF = 0x100
INT3 = 0xCC
_PAGE = 4096
_ADDR_MASK = 0x000F_FFFF_FFFF_F000  # physical address bits of a page-table entry
_PTE_PRESENT = 0x1
_PTE_LARGE = 0x80
#: RFLAGS bits a debugger may write: CF PF AF ZF SF OF, TF, DF, AC.
_USER_FLAGS = 0x8D5 | 0x100 | 0x400 | 0x40000


class DebugError(SandboxError):
    """A debugger request the target cannot serve (bad address, guest not
    stopped, register not writable here). The gdb server answers it with an
    error reply."""


@dataclass(slots=True)
class Stop:
    signal: int
    in_call: bool  # a call is held at this stop (else the guest is idle)
    final: bool = False  # a fault or abort: the call cannot go on
    swbreak: bool = False  # a breakpoint of ours (pc already moved back to it)


class Action(enum.Enum):
    CONTINUE = "continue"
    STEP = "step"
    KILL = "kill"


# ---- guest registers ---------------------------------------------------------------

#: The general registers in gdb's amd64 order, as fields of struct ab_kvm_regs.
GPR_FIELDS = ("rax", "rbx", "rcx", "rdx", "rsi", "rdi", "rbp", "rsp",
              "r8", "r9", "r10", "r11", "r12", "r13", "r14", "r15", "rip")


@dataclass(slots=True)
class Registers:
    """The guest's CPL3 registers at a stop (``in_stub``: read through a
    fault's exception frame)."""

    gpr: dict[str, int]  # GPR_FIELDS plus "rflags"
    segments: dict[str, int]  # cs ss ds es fs gs selectors
    fs_base: int
    gs_base: int
    fxsave: bytes  # the 512-byte legacy region: x87, MXCSR, XMM
    in_stub: bool


def read_registers(native: NativeSandbox) -> Registers:
    regs = ffi.new("struct ab_kvm_regs *")
    sregs = ffi.new("struct ab_kvm_sregs *")
    in_stub = ffi.new("int *")
    _check(lib.ab_sandbox_guest_regs(native.ptr, regs, sregs, in_stub), "read the registers")
    fx = ffi.new("uint8_t[512]")
    _check(lib.ab_sandbox_guest_fxsave(native.ptr, fx), "read the FPU registers")
    gpr = {name: int(getattr(regs, name)) for name in GPR_FIELDS}
    gpr["rflags"] = int(regs.rflags)
    segments = {name: int(getattr(sregs, name).selector) for name in ("cs", "ss", "ds", "es", "fs", "gs")}
    return Registers(gpr, segments, int(sregs.fs.base), int(sregs.gs.base), bytes(ffi.buffer(fx)),
                     bool(in_stub[0]))


def write_registers(native: NativeSandbox, gpr: dict[str, int]) -> None:
    """Write general registers, rip and rflags (only at a debug stop)."""
    regs = ffi.new("struct ab_kvm_regs *")
    sregs = ffi.new("struct ab_kvm_sregs *")
    in_stub = ffi.new("int *")
    _check(lib.ab_sandbox_guest_regs(native.ptr, regs, sregs, in_stub), "read the registers")
    for name, value in gpr.items():
        setattr(regs, name, value & 0xFFFF_FFFF_FFFF_FFFF)
    _check(lib.ab_sandbox_set_guest_regs(native.ptr, regs), "write the registers")


def _check(rc: int, what: str) -> None:
    if rc == 0:
        return
    import errno
    import os

    if rc == -errno.EPERM:
        raise DebugError(f"cannot {what}: registers are writable only at a breakpoint, step or interrupt")
    if rc == -errno.EBUSY:
        raise DebugError(f"cannot {what}: the guest is running")
    raise DebugError(f"cannot {what}: {os.strerror(-rc)}")


def resume_without_debugger(native: NativeSandbox, ih: Any) -> None:
    """A debug stop with no debugger attached: a debug interrupt or a
    single step simply resumes (a step's TF is cleared first, or every
    instruction would trap); a guest's own int3 is the fault it would be
    without debugging."""
    event = native.event
    reason = int(event.vector)
    if reason == STOP_BREAKPOINT:
        rip = int(event.rip)
        raise GuestFault(f"guest fault: #BP breakpoint at rip=0x{rip:x}", vector=3, rip=rip, address=None)
    if reason == STOP_STEP:
        regs = read_registers(native)
        write_registers(native, {"rflags": regs.gpr["rflags"] & ~RFLAGS_TF})
    lib.ab_interrupt_clear_debug_interrupt(ih)


# ---- guest memory --------------------------------------------------------------------


def translate(native: NativeSandbox, cr3: int, vaddr: int) -> int | None:
    """The guest physical address of ``vaddr`` through the page tables at
    ``cr3`` (4-level, 4 KiB / 2 MiB / 1 GiB pages), or None if it is not
    mapped. Every table address is checked against guest memory: the
    tables live in memory the host wrote, but nothing is trusted."""
    if not 0 <= vaddr < 1 << 48:
        return None
    memory = native.memory
    size = int(native.layout.memory_size)
    table = cr3 & _ADDR_MASK
    for level, shift in enumerate((39, 30, 21, 12)):
        index = (vaddr >> shift) & 0x1FF
        if table + index * 8 + 8 > size:
            return None
        (entry,) = struct.unpack_from("<Q", memory, table + index * 8)
        if not entry & _PTE_PRESENT:
            return None
        if level in (1, 2) and entry & _PTE_LARGE:
            base = entry & _ADDR_MASK & ~((1 << shift) - 1)
            paddr = base | (vaddr & ((1 << shift) - 1))
            return paddr if paddr < size else None
        table = entry & _ADDR_MASK
    paddr = table | (vaddr & (_PAGE - 1))
    return paddr if paddr < size else None


def _pages(vaddr: int, length: int) -> Iterator[tuple[int, int]]:
    """(address, bytes) runs of [vaddr, vaddr + length) that stay in a page."""
    end = vaddr + length
    while vaddr < end:
        n = min(end, (vaddr // _PAGE + 1) * _PAGE) - vaddr
        yield vaddr, n
        vaddr += n


# ---- the target ------------------------------------------------------------------------


class DebugTarget:
    """One sandbox under a debugger. Methods run on the sandbox's event
    loop; every access to the guest happens while its vCPU is stopped."""

    #: The most bytes one memory read or write may cover.
    MAX_TRANSFER = 1 << 20

    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        self.breakpoints: dict[int, int] = {}  # address -> the byte the int3 replaced
        self.internal: dict[int, int] = {}  # the same, for breakpoints of our own (entry)
        self.stop: Stop | None = None
        # Set when a stop is reported; replaced only when the stop is
        # consumed (resume()), so every waiter sees the stop it waits for.
        self._stopped = anyio.Event()
        self._resumed = anyio.Event()  # set when the debugger resumes a stop in a call
        self._action = Action.CONTINUE
        self.stepping = False
        self.resumes = 0  # how often the debugger resumed the guest (tests wait on it)

    # ---- attach / detach -------------------------------------------------------

    def attach(self) -> None:
        if self.engine.debugger is self:
            return
        if self.engine.debugger is not None:
            raise DebugError("a debugger is already attached to this sandbox")
        self.engine.check_open()
        self.engine.debugger = self

    async def release(self) -> None:
        """:meth:`detach` for a debugger that goes away at any moment: a
        call running meanwhile is paused first, since breakpoints can only
        be taken out of a stopped guest (else its next hit, with nobody
        attached, would be a fault)."""
        engine = self.engine
        if (engine.debugger is self and self.stop is None and engine.lifecycle.command is not None
                and (self.breakpoints or self.internal)):
            with anyio.move_on_after(5):  # a call may be stuck in an async host function
                await self.interrupt()
        self.detach()

    def detach(self) -> None:
        """Remove every breakpoint, clear a pending step and let the guest
        run on as if no debugger had been there. Only a stopped or idle
        guest can have its breakpoints removed: see :meth:`release`."""
        if self.engine.debugger is self:
            self.engine.debugger = None
        for table in (self.breakpoints, self.internal):
            for address, byte in list(table.items()):
                try:
                    self._write_virtual(address, bytes([byte]))
                except DebugError:
                    pass  # the sandbox closed meanwhile
            table.clear()
        native = self.engine.native
        if native is not None:
            lib.ab_interrupt_clear_debug_interrupt(self.engine.ih)
        self.stepping = False
        self._action = Action.CONTINUE
        self.stop = None
        self._stopped = anyio.Event()
        self._resumed.set()  # a held call continues

    # ---- called by the engine, in the call's task ------------------------------------

    async def paused(self) -> None:
        """The guest paused (AB_EV_DEBUG_STOP) in a call: report the stop
        and hold the call until the debugger resumes it."""
        native = self.engine.native
        assert native is not None
        reason = int(native.event.vector)
        stop = Stop(SIGTRAP, in_call=True)
        if reason == STOP_BREAKPOINT:
            address = int(native.event.rip) - 1
            ours = self.internal.pop(address, None)
            if ours is not None and address not in self.breakpoints:
                self._write_virtual(address, bytes([ours]))
            if ours is not None or address in self.breakpoints:
                write_registers(native, {"rip": address})  # gdb wants pc at the breakpoint
                stop.swbreak = True
        elif reason == STOP_STEP:
            # Always clear TF: a step that completed in a later call (over
            # the `out` that ended a call) must not keep trapping after a
            # continue.
            regs = read_registers(native)
            write_registers(native, {"rflags": regs.gpr["rflags"] & ~RFLAGS_TF})
        elif reason == STOP_INTERRUPT:
            if self.stop is None and not lib.ab_interrupt_is_debug_interrupted(self.engine.ih):
                # Withdrawn: the debugger resumed an idle stop after the vCPU
                # saw DEBUG_INTERRUPT but before this pause reached us.
                return
            stop.signal = SIGINT
        held = self.stop
        if held is not None and not held.in_call:
            # The debugger already holds an idle stop: this call started
            # meanwhile and paused at once ([T2]); it becomes that stop.
            held.in_call = True
        else:
            self._report(stop)
        await self._hold()

    async def crashed(self, error: SandboxError) -> None:
        """The call ends with a fault or abort: let the debugger look at the
        guest first (a final stop), then the error is raised."""
        from ._engine import signal_for

        self._report(Stop(signal_for(error), in_call=True, final=True))
        await self._hold()

    def _report(self, stop: Stop) -> None:
        self.stop = stop
        self._stopped.set()

    async def _hold(self) -> None:
        self._resumed = anyio.Event()
        await self._resumed.wait()
        action, self._action = self._action, Action.CONTINUE
        if self.engine.debugger is not self:
            return  # detached: run on
        native = self.engine.native
        assert native is not None
        if action is Action.KILL:
            raise ExecutionCancelled("the call was killed from the debugger")
        if action is Action.STEP:
            regs = read_registers(native)
            write_registers(native, {"rflags": regs.gpr["rflags"] | RFLAGS_TF})
        # The vCPU thread never clears DEBUG_INTERRUPT itself: clear it
        # before resuming, or the guest would pause again at once.
        lib.ab_interrupt_clear_debug_interrupt(self.engine.ih)

    # ---- called by the debugger ---------------------------------------------------------

    async def wait_stop(self) -> Stop:
        """The next stop (at once if the guest is stopped)."""
        while self.stop is None:
            await self._stopped.wait()  # set by _report(), renewed by resume()
        return self.stop

    async def interrupt(self) -> Stop:
        """Stop the guest (gdb's Ctrl-C): pause the call in flight, or, with
        no call in flight, report an idle stop (and keep DEBUG_INTERRUPT
        set so that a call starting meanwhile pauses at once)."""
        engine = self.engine
        ih = engine.ih
        lib.ab_interrupt_debug_interrupt(ih)
        delay = max(engine.config.interrupt_retry_delay, 0.001)
        while self.stop is None:
            if engine.lifecycle.command is None:
                self._report(Stop(SIGINT, in_call=False))
                break
            with anyio.move_on_after(delay):
                await self._stopped.wait()
            lib.ab_interrupt_kick(ih)
        return self.stop  # type: ignore[return-value]  # set by the loop above

    def resume(self, action: Action) -> None:
        """Continue, step or kill from the current stop."""
        stop = self.stop
        if stop is None:
            raise DebugError("the guest is not stopped")
        self.stop = None
        self._stopped = anyio.Event()  # the next stop sets it; waiters re-read it
        self.resumes += 1
        self.stepping = action is Action.STEP
        if not stop.in_call:
            # An idle stop: nothing is held. Stepping from it means running
            # until the next call pauses; keep DEBUG_INTERRUPT for that.
            if action is not Action.STEP:
                lib.ab_interrupt_clear_debug_interrupt(self.engine.ih)
            return
        self._action = action
        self._resumed.set()

    # ---- registers and memory (only while stopped) ---------------------------------------

    def _native(self) -> NativeSandbox:
        native = self.engine.native
        if native is None:
            raise DebugError("the sandbox is closed")
        if self.stop is None:
            raise DebugError("the guest is running")
        return native

    def registers(self) -> Registers:
        return read_registers(self._native())

    def set_registers(self, gpr: dict[str, int]) -> None:
        """The debugger's register writes. Of RFLAGS only the flags a CPL3
        program may change itself are taken (IOPL, IF and the rest keep
        their values): a debugger edits the guest, it does not lift it."""
        native = self._native()
        if "rflags" in gpr:
            current = read_registers(native).gpr["rflags"]
            gpr = dict(gpr, rflags=(current & ~_USER_FLAGS) | (gpr["rflags"] & _USER_FLAGS))
        write_registers(native, gpr)

    def _cr3(self, native: NativeSandbox) -> int:
        sregs = ffi.new("struct ab_kvm_sregs *")
        regs = ffi.new("struct ab_kvm_regs *")
        in_stub = ffi.new("int *")
        _check(lib.ab_sandbox_guest_regs(native.ptr, regs, sregs, in_stub), "read CR3")
        return int(sregs.cr3)

    def read_memory(self, vaddr: int, length: int) -> bytes:
        """Guest virtual memory, with our int3 bytes shown as what they
        replaced. DebugError if any byte is unmapped."""
        native = self._native()
        self._check_range(vaddr, length)
        cr3 = self._cr3(native)
        out = bytearray()
        for address, n in _pages(vaddr, length):
            paddr = translate(native, cr3, address)
            if paddr is None:
                raise DebugError(f"guest address 0x{address:x} is not mapped")
            out += native.memory[paddr : paddr + n]
        for table in (self.breakpoints, self.internal):
            for address, byte in table.items():
                if vaddr <= address < vaddr + length:
                    out[address - vaddr] = byte
        return bytes(out)

    def write_memory(self, vaddr: int, data: bytes) -> None:
        self._native()
        self._check_range(vaddr, len(data))
        self._write_virtual(vaddr, data)

    def _check_range(self, vaddr: int, length: int) -> None:
        if length < 0 or length > self.MAX_TRANSFER:
            raise DebugError(f"a transfer of {length} bytes is over the limit of {self.MAX_TRANSFER}")
        if vaddr < 0 or vaddr + length > 1 << 64:
            raise DebugError(f"guest address 0x{vaddr:x} is out of range")

    def _write_virtual(self, vaddr: int, data: bytes) -> None:
        native = self.engine.native
        if native is None:
            raise DebugError("the sandbox is closed")
        cr3 = self._cr3(native)
        runs = []
        for address, n in _pages(vaddr, len(data)):
            paddr = translate(native, cr3, address)
            if paddr is None:
                raise DebugError(f"guest address 0x{address:x} is not mapped")
            runs.append((paddr, address - vaddr, n))
        for paddr, offset, n in runs:  # all pages checked first: all or nothing
            chunk = data[offset : offset + n]
            _check(lib.ab_sandbox_debug_write(native.ptr, paddr, chunk, n), "write guest memory")

    # ---- breakpoints ------------------------------------------------------------------

    def insert_breakpoint(self, address: int, *, internal: bool = False) -> None:
        """Write an int3 at ``address`` (gdb's Z0; ``internal`` for our own,
        which the first hit removes). Both kinds may share an address."""
        table = self.internal if internal else self.breakpoints
        existing = self.breakpoints.get(address, self.internal.get(address))
        if existing is None:
            existing = self._peek(address)
            self._write_virtual(address, bytes([INT3]))
        table[address] = existing

    def _peek(self, address: int) -> int:
        native = self.engine.native
        if native is None:
            raise DebugError("the sandbox is closed")
        paddr = translate(native, self._cr3(native), address)
        if paddr is None:
            raise DebugError(f"guest address 0x{address:x} is not mapped")
        return int(native.memory[paddr : paddr + 1][0])

    def remove_breakpoint(self, address: int) -> None:
        original = self.breakpoints.pop(address, None)
        if original is None:
            raise DebugError(f"no breakpoint at 0x{address:x}")
        if address not in self.internal:
            self._write_virtual(address, bytes([original]))

    def function_address(self, image: bytes, name: str) -> int:
        """The entry point of the exported guest function ``name``, from
        the guest's export table (``.ab_exports``) in its memory."""
        from ._exports import export_addresses

        native = self.engine.native
        if native is None:
            raise DebugError("the sandbox is closed")
        addresses = export_addresses(image, native.memory)
        if name not in addresses:
            raise DebugError(f"the guest exports no function named {name!r}")
        return addresses[name]
