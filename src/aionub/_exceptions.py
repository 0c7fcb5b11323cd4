"""The exceptions aionub raises. All derive from :class:`SandboxError`.

Which ones poison the sandbox is decided in one place: ``POISONING`` below.
"""

from __future__ import annotations

__all__ = (
    "SandboxError",
    "KvmUnavailable",
    "InvalidGuest",
    "SandboxClosed",
    "SandboxPoisoned",
    "CallTimeout",
    "CpuTimeout",
    "ExecutionCancelled",
    "GuestAborted",
    "GuestFault",
    "StackOverflow",
    "GuestFunctionNotFound",
    "HostFunctionError",
    "GuestProtocolError",
    "VmError",
    "InvalidSnapshotFile",
    "POISONING",
)


class SandboxError(Exception):
    """Base class of every error aionub raises about a sandbox or a call."""


class KvmUnavailable(SandboxError):
    """``/dev/kvm`` is missing, inaccessible or unusable.

    Raised by :meth:`Sandbox.create`. The message says which device path and
    why (for instance a permission problem: add your user to the ``kvm``
    group).
    """


class InvalidGuest(SandboxError):
    """The guest image was rejected before it ran, or never became ready.

    Raised by :meth:`Sandbox.create` for an empty, non-ELF, truncated or
    otherwise malformed file, a segment outside guest memory, or a guest whose
    initialisation faulted, aborted or did not finish in time.
    """


class SandboxClosed(SandboxError):
    """The sandbox was closed (``aclose()`` or the end of ``async with``)."""


class SandboxPoisoned(SandboxError):
    """An earlier call did not run to completion, so the guest's state is
    unknown. Every call raises this until the sandbox is restored to a
    snapshot or replaced."""


class CallTimeout(SandboxError, TimeoutError):
    """The ``timeout=`` of :meth:`Sandbox.call` expired. The guest was stopped
    before this was raised and the sandbox is poisoned."""


class CpuTimeout(CallTimeout):
    """The call used up its CPU-time budget (``cpu_timeout=``, or the
    sandbox's ``cpu_timeout`` option): the guest had run for that much CPU
    time, time in host functions not counted. The guest was stopped before
    this was raised and the sandbox is poisoned.

    ``cpu_timeout`` is the budget and ``cpu_time`` the CPU time the guest
    actually used in the call (both seconds). ``cpu_time`` is never below
    the budget and exceeds it by tens of microseconds, the time the vCPU
    thread takes to notice (docs/cancellation.md, "Accuracy")."""

    def __init__(self, message: str, *, cpu_timeout: float, cpu_time: float) -> None:
        super().__init__(message)
        self.cpu_timeout = cpu_timeout
        self.cpu_time = cpu_time


class ExecutionCancelled(SandboxError):
    """The call was stopped through an :class:`InterruptHandle` (``kill()``
    from any thread). The sandbox is poisoned. A cancelled *task* sees
    ``asyncio.CancelledError`` (or trio's ``Cancelled``) instead."""


class GuestAborted(SandboxError):
    """The guest called ``ab_abort(code, message)``; the sandbox is poisoned."""

    def __init__(self, code: int, message: str) -> None:
        super().__init__(f"guest aborted with code {code}: {message}")
        self.code = code
        self.message = message


class GuestFault(SandboxError):
    """A CPU exception in the guest (#PF, #GP, #UD, #DE, ...), or a triple
    fault (``vector`` 8). ``vector`` is the exception number, ``rip`` the
    faulting instruction, ``address`` the faulting address (CR2) for page
    faults. The sandbox is poisoned."""

    def __init__(
        self,
        message: str,
        *,
        vector: int | None,
        rip: int | None,
        address: int | None,
        error_code: int | None = None,
    ) -> None:
        super().__init__(message)
        self.vector = vector
        self.rip = rip
        self.address = address
        self.error_code = error_code


class StackOverflow(GuestFault):
    """The guest's stack ran into the guard page below it."""


class GuestFunctionNotFound(SandboxError, LookupError):
    """The guest exports no function of that name. The sandbox is unaffected."""


class HostFunctionError(SandboxError):
    """A host function called by the guest failed: it raised (the original
    exception is the ``__cause__``), did not exist, or returned a value that
    cannot cross to the guest. The guest saw an error reply and finished the
    call; the sandbox is unaffected."""


class InvalidSnapshotFile(SandboxError, ValueError):
    """:meth:`Snapshot.load` refused a file: not a snapshot file, another
    format version, truncated or altered (its SHA-256 checksum does not
    match), fields that contradict each other, or vCPU state that this host
    cannot restore. Also a ``ValueError``."""


class GuestProtocolError(SandboxError):
    """The guest broke the ABI: a malformed record, a bad tag or length,
    invalid UTF-8. The sandbox is poisoned."""


class VmError(SandboxError):
    """KVM reported something a guest cannot cause through the ABI: a failed
    VM entry, an internal error, an unexpected exit or port access. The
    sandbox is poisoned. ``exit_reason`` is the KVM exit reason (0 if
    KVM_RUN itself failed)."""

    def __init__(self, message: str, *, exit_reason: int = 0) -> None:
        super().__init__(message)
        self.exit_reason = exit_reason


# A call that ends with one of these did not run to completion inside the
# guest, so the guest's state is unknown: the sandbox is poisoned. Clean
# errors reported by a guest that finished the call (GuestFunctionNotFound,
# a TypeError for bad arguments, HostFunctionError) do not poison.
POISONING: tuple[type[BaseException], ...] = (
    CallTimeout,
    ExecutionCancelled,
    GuestAborted,
    GuestFault,
    GuestProtocolError,
    VmError,
)
