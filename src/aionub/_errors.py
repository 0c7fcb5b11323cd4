"""Turning a vCPU event that ends a call abnormally into the exception the
caller sees. One place decides which exception each event becomes."""

from __future__ import annotations

from typing import Any

from . import _native
from ._exceptions import (
    ExecutionCancelled,
    GuestAborted,
    GuestFault,
    GuestProtocolError,
    SandboxError,
    StackOverflow,
    VmError,
)
from ._wire import Reader

__all__ = ("event_error", "VECTOR_NAMES")

VECTOR_NAMES = {
    0: "#DE divide error",
    1: "#DB debug",
    2: "NMI",
    3: "#BP breakpoint",
    4: "#OF overflow",
    5: "#BR bound range",
    6: "#UD invalid opcode",
    7: "#NM device not available",
    8: "#DF double fault",
    10: "#TS invalid TSS",
    11: "#NP segment not present",
    12: "#SS stack-segment fault",
    13: "#GP general protection fault",
    14: "#PF page fault",
    16: "#MF x87 floating-point error",
    17: "#AC alignment check",
    18: "#MC machine check",
    19: "#XM SIMD floating-point error",
    20: "#VE virtualisation exception",
    21: "#CP control protection",
}
_KVM_EXIT_IO = 2
_PAGE = 4096


def _page_fault_access(error_code: int) -> str:
    if error_code & 0x10:
        access = "execute"
    elif error_code & 0x2:
        access = "write"
    else:
        access = "read"
    cause = "protection violation" if error_code & 0x1 else "unmapped page"
    return f"{access} ({cause})"


def _fault(event: Any, layout: Any) -> GuestFault:
    vector = int(event.vector)
    rip = int(event.rip)
    error_code = int(event.error_code)
    name = VECTOR_NAMES.get(vector, f"vector {vector}")
    if vector != 14:
        return GuestFault(
            f"guest fault: {name} at rip=0x{rip:x}", vector=vector, rip=rip, address=None, error_code=error_code
        )
    address = int(event.address)
    if layout.guard_addr <= address < layout.guard_addr + _PAGE:
        return StackOverflow(
            f"guest stack overflow: {name} in the guard page at 0x{address:x} (rip=0x{rip:x})",
            vector=vector, rip=rip, address=address, error_code=error_code,
        )
    return GuestFault(
        f"guest fault: {name}, {_page_fault_access(error_code)} at 0x{address:x} (rip=0x{rip:x})",
        vector=vector, rip=rip, address=address, error_code=error_code,
    )


def _abort(event: Any, output: memoryview) -> SandboxError:
    r = Reader(output, event.length, "abort record")
    code = r.i64()
    message = r.text()
    r.done()
    return GuestAborted(code, message)


def _vm_error(event: Any) -> SandboxError:
    message = _native.ffi.string(event.message).decode("utf-8", "replace")
    reason = int(event.exit_reason)
    if reason == _native.EXIT_SHUTDOWN:
        rip = int(event.rip)
        return GuestFault(f"guest triple fault (rip=0x{rip:x})", vector=8, rip=rip, address=None)
    if reason == _KVM_EXIT_IO:
        return GuestProtocolError(f"guest broke the port protocol: {message}")
    return VmError(message, exit_reason=reason)


def event_error(kind: int, event: Any, output: memoryview, layout: Any) -> SandboxError:
    """The exception for an event that ends a call without a result."""
    if kind == _native.EV_FAULT:
        return _fault(event, layout)
    if kind == _native.EV_ABORT:
        try:
            return _abort(event, output)
        except GuestProtocolError as exc:
            return exc
    if kind == _native.EV_CANCELLED:
        return ExecutionCancelled("the call was stopped by InterruptHandle.kill()")
    if kind == _native.EV_VM_ERROR:
        return _vm_error(event)
    if kind == _native.EV_CREATE_FAILED:
        message = _native.ffi.string(event.message).decode("utf-8", "replace")
        return VmError(f"cannot create the VM: {message}")
    return GuestProtocolError(f"unexpected event {kind} from the vCPU thread")
