"""Decoding a call's result record, which the (hostile) guest wrote."""

from __future__ import annotations

from typing import Any

from . import _abi
from ._exceptions import GuestProtocolError
from ._wire import GuestFunction, Reader

__all__ = ("decode_result",)


def decode_result(fn: GuestFunction, out: memoryview, length: int, guest: str) -> Any:
    """The value of a RESULT record of ``length`` bytes in ``out``.

    Raises GuestProtocolError for a record that breaks the protocol (which
    poisons the sandbox: the guest is lying or broken) and TypeError when
    the guest rejected the arguments (which does not)."""
    # Fast path: status OK with a None value, from a function declared to
    # return None.
    if length == 2 and out[0] == 0 and out[1] == 0 and fn.returns == _abi.TAG_NONE:
        return None
    r = Reader(out, length, f"result of {fn.name}()")
    status = r.u8()
    if status == _abi.STATUS_OK:
        # The value must carry the declared return type: the guest would
        # otherwise hand the caller, say, a str from a function whose
        # signature promises an int.
        if r.pos < r.end and out[r.pos] != fn.returns and fn.returns != _abi.TAG_ANY:
            raise r.fail(
                f"{fn.name}() is declared to return {_abi.TYPE_NAMES[fn.returns]} "
                f"but returned a value with type tag {out[r.pos]}"
            )
        value = r.value()
        r.done()
        return value
    message = r.text()
    r.done()
    if status == _abi.STATUS_NOT_FOUND:
        # The host only calls names from the guest's own function table, so
        # "not found" contradicts what the guest declared: a lie.
        raise GuestProtocolError(
            f"guest {guest} exports {fn.name}() but answered that it has no function named {message!r}"
        )
    if status == _abi.STATUS_BAD_ARGS:
        raise TypeError(f"guest rejected the arguments of {fn.name}(): {message}")
    raise GuestProtocolError(f"result of {fn.name}() has unknown status {status}")
