"""The wire format between host and guest (docs/abi.md, "Wire format").

Encoding (host -> guest) checks the Python values it is given; decoding
(guest -> host) trusts nothing: every read is bounds-checked against the
length the guest declared, tags and UTF-8 are validated, and any violation is
a :class:`GuestProtocolError`.
"""

from __future__ import annotations

import functools
import struct
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, TypeAlias

from . import _abi
from ._exceptions import GuestProtocolError

__all__ = (
    "GuestFunction",
    "Encoded",
    "Reader",
    "encode_value",
    "encode_string",
    "encode_call",
    "decode_ready",
    "ready_table",
)

_U32 = struct.Struct("<I")
_I64 = struct.Struct("<q")
_U64 = struct.Struct("<Q")
_F64 = struct.Struct("<d")
_HEADER = struct.Struct("<BI")  # a list's or dict's tag and count
_I64_MIN = -(2**63)
_I64_MAX = 2**63 - 1

#: What travels on the wire: scalars, and lists and dicts (str keys) of values.
Value: TypeAlias = "bool | int | float | str | bytes | list[Value] | dict[str, Value] | None"

_SUPPORTED = "int, float, bool, str, bytes, None, list, tuple, dict"


@dataclass(frozen=True, slots=True)
class Encoded:
    """A value already encoded by :func:`encode_value`, sent as it is where a
    value goes (also inside lists and dicts). Lets a host function check
    that its result can travel, and say so to the guest, without encoding
    it twice. Its nesting counts from where it is put: whoever nests it
    keeps the total within ``_abi.MAX_DEPTH``."""

    data: bytes


@dataclass(frozen=True, slots=True)
class GuestFunction:
    """A function the guest exports: its name, parameter types and return
    type (tags from the ABI; ``str(fn)`` renders a signature)."""

    name: str
    params: tuple[int, ...]
    returns: int

    def __str__(self) -> str:
        params = ", ".join(_abi.TYPE_NAMES[p] for p in self.params)
        return f"{self.name}({params}) -> {_abi.TYPE_NAMES[self.returns]}"

    def prefix(self) -> bytes:
        """The request kind and encoded name that start every call request to it."""
        return bytes((_abi.REQ_CALL,)) + encode_string(self.name.encode())


def encode_string(raw: bytes) -> bytes:
    return _U32.pack(len(raw)) + raw + b"\x00"


def _type_name(value: object) -> str:
    return type(value).__name__


def _path(what: str, path: list[int | str]) -> str:
    """``what`` followed by the subscripts that lead to a nested value:
    ``argument 1[3]['price']``."""
    return what + "".join(f"[{_key(p)}]" if isinstance(p, str) else f"[{p}]" for p in path)


def _key(key: str) -> str:
    return repr(key) if len(key) <= 40 else repr(key[:40]) + "..."


def _encode_scalar(value: object, what: str, path: list[int | str] | None = None) -> bytes | None:
    """A scalar's encoding, or None when ``value`` is not a scalar."""
    if value is None:
        return b"\x00"
    if value is True:
        return b"\x01\x01"
    if value is False:
        return b"\x01\x00"
    if isinstance(value, int):
        if not _I64_MIN <= value <= _I64_MAX:
            raise OverflowError(f"{_path(what, path or [])}: {value} does not fit in a signed 64-bit integer")
        return b"\x02" + _I64.pack(value)
    if isinstance(value, float):
        return b"\x03" + _F64.pack(value)
    if isinstance(value, str):
        try:
            raw = value.encode("utf-8")
        except UnicodeEncodeError as exc:
            raise ValueError(f"{_path(what, path or [])}: string is not valid Unicode ({exc.reason})") from None
        return b"\x04" + _U32.pack(len(raw)) + raw + b"\x00"
    if isinstance(value, bytes | bytearray | memoryview):
        raw = bytes(value)
        return b"\x05" + _U32.pack(len(raw)) + raw + b"\x00"
    return None


def encode_value(value: object, what: str, *, max_depth: int = _abi.MAX_DEPTH) -> bytes:
    """Encode a host value whose type decides the tag. ``what`` names the
    value in error messages ("add() argument 2"); for a value inside lists
    and dicts the message adds the path to it (``f() argument 1[3]['price']``).

    Raises TypeError for a type that cannot travel (a set, an object) or a
    dict key that is not a str, ValueError for a list or dict that contains
    itself or nests deeper than ``max_depth`` levels (a list or dict at the top
    is at depth 1), OverflowError for an int outside int64."""
    if type(value) is Encoded:
        return value.data
    encoded = _encode_scalar(value, what)
    if encoded is not None:
        return encoded
    if isinstance(value, list | tuple | dict):
        parts: list[bytes] = []
        _encode_container(value, what, [], set(), parts, max_depth)
        return b"".join(parts)
    raise TypeError(f"{what}: cannot pass a value of type {_type_name(value)} (supported: {_SUPPORTED})")


def _encode_container(
    value: list[Any] | tuple[Any, ...] | dict[Any, Any],
    what: str,
    path: list[int | str],
    active: set[int],
    parts: list[bytes],
    max_depth: int,
) -> None:
    """Append the encoding of a list, tuple or dict to ``parts``. ``path``
    leads from the outermost value to this one and ``active`` holds the ids
    of the containers on that path (a cycle returns to one of them). The
    recursion is bounded: at most ``max_depth`` levels."""
    if len(path) >= max_depth:
        raise ValueError(f"{_path(what, path)}: lists and dicts nest deeper than {max_depth} levels")
    if id(value) in active:
        raise ValueError(f"{_path(what, path)}: the {_type_name(value)} contains itself")
    active.add(id(value))
    if isinstance(value, dict):
        parts.append(_HEADER.pack(_abi.TAG_DICT, len(value)))
        for key, item in value.items():
            if not isinstance(key, str):
                raise TypeError(
                    f"{_path(what, path)}: dict keys must be str, not {_type_name(key)} (key {key!r:.60})"
                )
            path.append(key)
            try:
                raw = key.encode("utf-8")
            except UnicodeEncodeError as exc:
                raise ValueError(f"{_path(what, path)}: the key is not valid Unicode ({exc.reason})") from None
            parts.append(_U32.pack(len(raw)) + raw + b"\x00")
            _encode_item(item, what, path, active, parts, max_depth)
            path.pop()
    else:
        parts.append(_HEADER.pack(_abi.TAG_LIST, len(value)))
        for i, item in enumerate(value):
            path.append(i)
            _encode_item(item, what, path, active, parts, max_depth)
            path.pop()
    active.discard(id(value))


def _encode_item(
    item: object, what: str, path: list[int | str], active: set[int], parts: list[bytes], max_depth: int
) -> None:
    encoded = _encode_scalar(item, what, path)
    if encoded is not None:
        parts.append(encoded)
    elif type(item) is Encoded:
        parts.append(item.data)
    elif isinstance(item, list | tuple | dict):
        _encode_container(item, what, path, active, parts, max_depth)
    else:
        raise TypeError(
            f"{_path(what, path)}: cannot pass a value of type {_type_name(item)} (supported: {_SUPPORTED})"
        )


def _check_param(fn: GuestFunction, index: int, tag: int, value: object) -> object:
    """Check (and for float parameters, convert) one argument. An ``any``
    parameter takes whatever encode_value accepts."""
    ok: bool
    if tag == _abi.TAG_INT:
        ok = isinstance(value, int) and not isinstance(value, bool)
    elif tag == _abi.TAG_FLOAT:
        ok = isinstance(value, int | float) and not isinstance(value, bool)
        if ok:
            value = float(value)  # type: ignore[arg-type]
    elif tag == _abi.TAG_BOOL:
        ok = isinstance(value, bool)
    elif tag == _abi.TAG_STR:
        ok = isinstance(value, str)
    elif tag == _abi.TAG_BYTES:
        ok = isinstance(value, bytes | bytearray | memoryview)
    elif tag == _abi.TAG_ANY:
        ok = True
    else:
        ok = value is None
    if not ok:
        raise TypeError(
            f"{fn.name}() argument {index + 1} must be {_abi.TYPE_NAMES[tag]}, "
            f"not {_type_name(value)}"
        )
    return value


def encode_call(fn: GuestFunction, prefix: bytes, args: Sequence[object]) -> bytes:
    """The call request for ``fn(*args)``; raises TypeError naming the
    function and the parameter when the arguments do not fit its signature."""
    if len(args) != len(fn.params):
        raise TypeError(
            f"{fn.name}() takes {len(fn.params)} argument"
            f"{'' if len(fn.params) == 1 else 's'} ({len(args)} given)"
        )
    if not args:
        return prefix + b"\x00"
    parts = [prefix, bytes((len(args),))]
    for i, (tag, value) in enumerate(zip(fn.params, args, strict=True)):
        value = _check_param(fn, i, tag, value)
        parts.append(encode_value(value, f"{fn.name}() argument {i + 1}"))
    return b"".join(parts)


class Reader:
    """Bounds-checked reads of a record the guest wrote."""

    __slots__ = ("buf", "pos", "end", "what")

    def __init__(self, buf: memoryview, length: int, what: str) -> None:
        self.buf = buf
        self.pos = 0
        self.end = length
        self.what = what

    def fail(self, problem: str) -> GuestProtocolError:
        return GuestProtocolError(f"malformed {self.what} from the guest: {problem}")

    def _take(self, n: int) -> int:
        pos = self.pos
        if n > self.end - pos:
            raise self.fail(f"needs {n} more bytes at offset {pos}, record is {self.end} bytes")
        self.pos = pos + n
        return pos

    def u8(self) -> int:
        return self.buf[self._take(1)]

    def u32(self) -> int:
        return _U32.unpack_from(self.buf, self._take(4))[0]  # type: ignore[no-any-return]

    def i64(self) -> int:
        return _I64.unpack_from(self.buf, self._take(8))[0]  # type: ignore[no-any-return]

    def f64(self) -> float:
        return _F64.unpack_from(self.buf, self._take(8))[0]  # type: ignore[no-any-return]

    def chunk(self, n: int) -> bytes:
        """``n`` bytes as they are (no terminator)."""
        start = self._take(n)
        return bytes(self.buf[start : start + n])

    def u64(self) -> int:
        return _U64.unpack_from(self.buf, self._take(8))[0]  # type: ignore[no-any-return]

    def raw(self) -> bytes:
        n = self.u32()
        start = self._take(n)
        nul = self._take(1)
        if self.buf[nul] != 0:
            raise self.fail(f"byte string of length {n} at offset {start} lacks its NUL terminator")
        return bytes(self.buf[start : start + n])

    def text(self) -> str:
        start = self.pos
        data = self.raw()
        try:
            return data.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise self.fail(f"string at offset {start} is not valid UTF-8 ({exc.reason})") from None

    def value(self) -> Value:
        tag = self.u8()
        if tag < _abi.TAG_LIST:
            return self._scalar(tag)
        if tag <= _abi.TAG_DICT:
            return self._container(tag)
        raise self.fail(f"unknown value tag {tag} at offset {self.pos - 1}")

    def _scalar(self, tag: int) -> Value:
        if tag == _abi.TAG_NONE:
            return None
        if tag == _abi.TAG_INT:
            return self.i64()
        if tag == _abi.TAG_FLOAT:
            return self.f64()
        if tag == _abi.TAG_BOOL:
            b = self.u8()
            if b > 1:
                raise self.fail(f"bool value {b} is neither 0 nor 1")
            return b == 1
        if tag == _abi.TAG_STR:
            return self.text()
        if tag == _abi.TAG_BYTES:
            return self.raw()
        raise self.fail(f"unknown value tag {tag} at offset {self.pos - 1}")

    def _open(self, tag: int) -> tuple[list[Any] | dict[str, Any], int]:
        """A new list or dict and its count, which must fit the bytes left."""
        at = self.pos - 1
        count = self.u32()
        left = self.end - self.pos
        if tag == _abi.TAG_LIST:
            if count > left // _abi.MIN_VALUE_SIZE:
                raise self.fail(f"list at offset {at} claims {count} items but only {left} bytes are left")
            return [], count
        if count > left // _abi.MIN_ENTRY_SIZE:
            raise self.fail(f"dict at offset {at} claims {count} entries but only {left} bytes are left")
        return {}, count

    def _container(self, tag: int) -> Value:
        """A list or dict, decoded without recursion: ``open`` holds the
        containers being filled (at most ``_abi.MAX_DEPTH``) and ``left`` how
        many items each still expects. Every item consumes at least one byte,
        so the work is bounded by the record's length."""
        root, count = self._open(tag)
        open_: list[list[Any] | dict[str, Any]] = [root]
        left = [count]
        while open_:
            if not left[-1]:
                open_.pop()
                left.pop()
                continue
            left[-1] -= 1
            parent = open_[-1]
            key = ""
            if type(parent) is dict:
                at = self.pos
                key = self.text()
                if key in parent:
                    raise self.fail(f"dict key {key!r:.60} at offset {at} appears twice")
            tag = self.u8()
            item: Value
            if tag < _abi.TAG_LIST:
                item = self._scalar(tag)
            elif tag <= _abi.TAG_DICT:
                if len(open_) >= _abi.MAX_DEPTH:
                    raise self.fail(
                        f"lists and dicts nest deeper than {_abi.MAX_DEPTH} levels (offset {self.pos - 1})"
                    )
                item, n = self._open(tag)
                open_.append(item)
                left.append(n)
            else:
                raise self.fail(f"unknown value tag {tag} at offset {self.pos - 1}")
            if type(parent) is dict:
                parent[key] = item
            else:
                parent.append(item)  # type: ignore[union-attr]
        return root

    def done(self) -> None:
        if self.pos != self.end:
            raise self.fail(f"{self.end - self.pos} unexpected trailing bytes")


def _tag(r: Reader, allow_none: bool) -> int:
    tag = r.u8()
    if tag not in _abi.SIGNATURE_TAGS or (tag == _abi.TAG_NONE and not allow_none):
        raise r.fail(f"invalid type tag {tag} in a signature")
    return tag


def decode_ready(buf: memoryview, length: int) -> tuple[dict[str, GuestFunction], int]:
    """The READY record: the function table and the guest's flags
    (``_abi.READY_HAS_MAIN``)."""
    r = Reader(buf, length, "function table")
    count = r.u32()
    functions: dict[str, GuestFunction] = {}
    for _ in range(count):
        name = r.text()
        if not name or len(name.encode()) > _abi.MAX_NAME:
            raise r.fail(f"function name {name!r} is empty or too long")
        if name in functions:
            raise r.fail(f"function {name!r} is exported twice")
        returns = _tag(r, allow_none=True)
        nparams = r.u8()
        if nparams > _abi.MAX_PARAMS:
            raise r.fail(f"function {name!r} declares {nparams} parameters")
        params = tuple(_tag(r, allow_none=False) for _ in range(nparams))
        functions[name] = GuestFunction(name, params, returns)
    flags = r.u32()
    if flags & ~_abi.READY_FLAGS:
        raise r.fail(f"unknown flags 0x{flags:x}")
    r.done()
    return functions, flags



@functools.lru_cache(maxsize=64)
def ready_table(ready: bytes) -> tuple[Mapping[str, GuestFunction], int]:
    """``decode_ready`` of a READY record kept as bytes (a snapshot's), shared:
    every sandbox spawned from one snapshot gets the same table, decoded
    once. Callers must not modify it."""
    return decode_ready(memoryview(ready), len(ready))

def decode_args(r: Reader) -> list[Any]:
    nargs = r.u8()
    if nargs > _abi.MAX_PARAMS:
        raise r.fail(f"{nargs} arguments is more than the limit of {_abi.MAX_PARAMS}")
    return [r.value() for _ in range(nargs)]
