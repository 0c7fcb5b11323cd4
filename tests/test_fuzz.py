"""Fuzzing, short runs (scripts/fuzz_long.py does the long ones): the host's
decoders of everything a guest writes, the event-to-exception mapping, and
the ELF loader (``ab_elf_validate``, the checks ``ab_sandbox_create`` makes).

Properties: a decoder either returns a value of the right shape or raises
GuestProtocolError (never another exception); it never looks past the
length the guest declared (the same bytes with a different tail decode the
same way); valid records round-trip; the ELF loader accepts or rejects with
an "elf:" or "config:" message and never crashes the process."""

from __future__ import annotations

import math
import struct
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings, strategies as st

import aionub
from aionub import _abi, _native
from aionub._errors import event_error
from aionub._exceptions import GuestProtocolError
from aionub._hostcalls import GuestServices
from aionub._results import decode_result
from aionub._wire import GuestFunction, Reader, decode_args, decode_ready, encode_string, encode_value

pytestmark = pytest.mark.no_kvm

FUZZ = settings(
    max_examples=300,
    deadline=None,
    derandomize=True,  # the same inputs in every CI run; scripts/fuzz_long.py explores
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)

u32 = st.integers(0, 2**32 - 1)
u64 = st.integers(0, 2**64 - 1)


def records(max_size: int = 300) -> st.SearchStrategy[bytes]:
    """Guest-written bytes: random, or built from wire pieces (tags, length
    fields at interesting values, UTF-8 and not) so decoders get past their
    first checks."""
    length = st.sampled_from([0, 1, 2, 3, 4, 5, 8, 16, 255, 256, 2**31 - 1, 2**31, 2**32 - 1])
    piece = st.one_of(
        st.binary(max_size=16),
        st.integers(0, 9).map(lambda t: bytes([t])),
        # a list or dict header with a small count, so nesting gets built
        st.tuples(st.sampled_from([_abi.TAG_LIST, _abi.TAG_DICT]), st.integers(0, 3)).map(
            lambda h: struct.pack("<BI", *h)
        ),
        length.map(lambda n: struct.pack("<I", n)),
        st.text(max_size=8).map(lambda s: encode_string(s.encode("utf-8", "surrogatepass"))),
        st.binary(max_size=8).map(encode_string),
        st.integers(-(2**63), 2**63 - 1).map(lambda i: struct.pack("<q", i)),
        st.just(b"\x00"),
    )
    built = st.lists(piece, max_size=12).map(b"".join)
    return st.one_of(st.binary(max_size=max_size), built)


def decode_outcome(decode: Any, data: bytes, length: int, tail: bytes) -> tuple[str, Any]:
    """Decode data[:length] placed in a buffer followed by `tail`; the
    outcome is ("ok", value) or ("error", message). Only GuestProtocolError
    (and the clean errors the caller asked for) may escape."""
    buf = memoryview(bytearray(data[:length] + tail))
    try:
        return "ok", decode(buf, length)
    except GuestProtocolError as exc:
        return "error", str(exc)


def tail_independent(decode: Any, data: bytes, cut: int, tail_a: bytes, tail_b: bytes) -> tuple[str, Any]:
    length = min(cut, len(data))
    a = decode_outcome(decode, data, length, tail_a)
    b = decode_outcome(decode, data, length, tail_b)
    assert a == b, "the decoder looked past the declared length"
    return a


# ---- Reader and the record decoders --------------------------------------------------


def decode_value_record(buf: memoryview, length: int) -> Any:
    r = Reader(buf, length, "value")
    v = r.value()
    r.done()
    return v


def decode_args_record(buf: memoryview, length: int) -> Any:
    r = Reader(buf, length, "host-call request")
    name = r.text()
    args = decode_args(r)
    r.done()
    return name, args


@FUZZ
@given(records(), st.integers(0, 400), st.binary(max_size=8), st.binary(min_size=1, max_size=8))
def test_value_decoder(data: bytes, cut: int, tail_a: bytes, tail_b: bytes) -> None:
    kind, value = tail_independent(decode_value_record, data, cut, tail_a, tail_b)
    if kind == "ok":
        check_shape(value)


def check_shape(value: Any, depth: int = 0) -> None:
    """A decoded value: scalars, lists and str-keyed dicts, nested at most MAX_DEPTH deep."""
    if isinstance(value, list | dict):
        assert depth < _abi.MAX_DEPTH
        items = value.values() if isinstance(value, dict) else value
        assert all(type(k) is str for k in value) if isinstance(value, dict) else True
        for item in items:
            check_shape(item, depth + 1)
        return
    assert value is None or type(value) in (bool, int, float, str, bytes)
    if isinstance(value, int) and not isinstance(value, bool):
        assert -(2**63) <= value < 2**63


@FUZZ
@given(records(), st.integers(0, 400), st.binary(max_size=8), st.binary(min_size=1, max_size=8))
def test_function_table_decoder(data: bytes, cut: int, tail_a: bytes, tail_b: bytes) -> None:
    kind, table = tail_independent(decode_ready, data, cut, tail_a, tail_b)
    if kind == "ok":
        table, flags = table
        assert flags & ~_abi.READY_FLAGS == 0
        for name, fn in table.items():
            assert fn.name == name and 0 < len(name.encode()) <= _abi.MAX_NAME
            assert fn.returns in _abi.SIGNATURE_TAGS
            assert len(fn.params) <= _abi.MAX_PARAMS
            assert all(p in _abi.SIGNATURE_TAGS and p != _abi.TAG_NONE for p in fn.params)


@FUZZ
@given(records(), st.integers(0, 400), st.binary(max_size=8), st.binary(min_size=1, max_size=8))
def test_host_call_request_decoder(data: bytes, cut: int, tail_a: bytes, tail_b: bytes) -> None:
    kind, decoded = tail_independent(decode_args_record, data, cut, tail_a, tail_b)
    if kind == "ok":
        name, args = decoded
        assert isinstance(name, str) and len(args) <= _abi.MAX_PARAMS


scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-(2**63), 2**63 - 1),
    st.floats(allow_nan=True),
    st.text(),
    st.binary(),
)
values = st.recursive(
    scalars,
    lambda children: st.one_of(
        st.lists(children, max_size=5),
        st.lists(children, max_size=3).map(tuple),
        st.dictionaries(st.text(max_size=8), children, max_size=5),
    ),
    max_leaves=20,
)


def same(a: Any, b: Any) -> bool:
    """Equal after a round trip: NaN matches NaN, -0.0 only -0.0, tuples come back as lists."""
    if isinstance(a, float) and math.isnan(a):
        return isinstance(b, float) and math.isnan(b)
    if isinstance(a, float) and a == 0.0:
        return type(b) is float and b == 0.0 and math.copysign(1, a) == math.copysign(1, b)
    if isinstance(a, list | tuple):
        return type(b) is list and len(a) == len(b) and all(same(x, y) for x, y in zip(a, b, strict=True))
    if isinstance(a, dict):
        return type(b) is dict and list(a) == list(b) and all(same(a[k], b[k]) for k in a)
    return type(a) is type(b) and a == b


@FUZZ
@given(st.lists(values, max_size=_abi.MAX_PARAMS), st.text(min_size=1, max_size=40))
def test_valid_records_round_trip(args: list[Any], name: str) -> None:
    record = encode_string(name.encode()) + bytes([len(args)]) + b"".join(
        encode_value(a, "arg") for a in args
    )
    got_name, got = decode_args_record(memoryview(record), len(record))
    assert got_name == name
    assert len(got) == len(args) and all(same(a, b) for a, b in zip(args, got, strict=True))


signatures = st.lists(
    st.tuples(
        st.text(min_size=1, max_size=20),
        st.sampled_from(sorted(_abi.SIGNATURE_TAGS)),
        st.lists(st.sampled_from(sorted(_abi.SIGNATURE_TAGS - {_abi.TAG_NONE})), max_size=_abi.MAX_PARAMS),
    ),
    max_size=10,
    unique_by=lambda f: f[0],
)


@FUZZ
@given(signatures)
def test_valid_function_tables_round_trip(functions: list[tuple[str, int, list[int]]]) -> None:
    table = struct.pack("<I", len(functions)) + b"".join(
        encode_string(n.encode()) + bytes([r, len(p), *p]) for n, r, p in functions
    ) + struct.pack("<I", _abi.READY_HAS_MAIN)
    decoded = decode_ready(memoryview(table), len(table))
    assert decoded == ({n: GuestFunction(n, tuple(p), r) for n, r, p in functions}, _abi.READY_HAS_MAIN)


# ---- lists and dicts: hostile nesting, counts and keys; caller errors ----------------------


def header(tag: int, count: int) -> bytes:
    return struct.pack("<BI", tag, count)


def nested(depth: int, tag: int = _abi.TAG_LIST) -> bytes:
    """``depth`` containers, each holding the next; the innermost holds None."""
    one = header(tag, 1) + (encode_string(b"k") if tag == _abi.TAG_DICT else b"")
    return one * depth + b"\x00"


def decode_bytes(data: bytes) -> Any:
    return decode_value_record(memoryview(data), len(data))


@pytest.mark.parametrize("tag", [_abi.TAG_LIST, _abi.TAG_DICT])
def test_nesting_up_to_the_limit_decodes(tag: int) -> None:
    value = decode_bytes(nested(_abi.MAX_DEPTH, tag))
    for _ in range(_abi.MAX_DEPTH):
        value = value[0] if tag == _abi.TAG_LIST else value["k"]
    assert value is None


@pytest.mark.parametrize("depth", [_abi.MAX_DEPTH + 1, 1000, 10**6])
@pytest.mark.parametrize("tag", [_abi.TAG_LIST, _abi.TAG_DICT])
def test_hostile_nesting_costs_bounded_time(depth: int, tag: int) -> None:
    """10**6 levels: rejected at level 65, after reading a few hundred bytes."""
    import time

    data = nested(depth, tag)
    start = time.process_time()
    with pytest.raises(GuestProtocolError, match=f"nest deeper than {_abi.MAX_DEPTH}"):
        decode_bytes(data)
    assert time.process_time() - start < 0.5


@pytest.mark.parametrize(
    ("record", "message"),
    [
        (header(_abi.TAG_LIST, 2**32 - 1) + b"\x00", "claims 4294967295 items but only 1 bytes"),
        (header(_abi.TAG_LIST, 3) + b"\x00\x00", "claims 3 items"),
        (header(_abi.TAG_DICT, 1) + b"\x00" * 5, "claims 1 entries"),
        (header(_abi.TAG_DICT, 2) + (encode_string(b"a") + b"\x00") * 2, "key 'a' at offset 12 appears twice"),
        (header(_abi.TAG_DICT, 1) + encode_string(b"\xff") + b"\x00", "not valid UTF-8"),
        (header(_abi.TAG_DICT, 1) + b"\x01\x00\x00\x00aX\x00", "lacks its NUL"),
        (header(_abi.TAG_LIST, 1) + b"\x08", "unknown value tag 8"),
        (header(_abi.TAG_LIST, 1) + b"\x01\x02", "neither 0 nor 1"),
        (header(_abi.TAG_LIST, 2) + b"\x00" + header(_abi.TAG_LIST, 1), "claims 1 items but only 0 bytes"),
        (header(_abi.TAG_LIST, 1) + b"\x02\x00", "needs 8 more bytes"),
        (header(_abi.TAG_LIST, 0) + b"\x00", "1 unexpected trailing bytes"),
    ],
)
def test_hostile_containers_are_protocol_errors(record: bytes, message: str) -> None:
    with pytest.raises(GuestProtocolError, match=message):
        decode_bytes(record)


def test_duplicate_keys_in_nested_dicts() -> None:
    inner = header(_abi.TAG_DICT, 2) + (encode_string(b"x") + b"\x00") * 2
    record = header(_abi.TAG_LIST, 1) + inner
    with pytest.raises(GuestProtocolError, match=r"'x'.*appears twice"):
        decode_bytes(record)
    # the same key in different dicts is fine
    ok = header(_abi.TAG_LIST, 2) + (header(_abi.TAG_DICT, 1) + encode_string(b"x") + b"\x00") * 2
    assert decode_bytes(ok) == [{"x": None}, {"x": None}]


class Opaque:
    pass


def cyclic() -> list[Any]:
    a: list[Any] = [1]
    a.append({"self": a})
    return a


def deep(levels: int) -> list[Any]:
    value: list[Any] = []
    for _ in range(levels - 1):
        value = [value]
    return value


@pytest.mark.parametrize(
    ("value", "error", "message"),
    [
        ([1, {2}], TypeError, r"^f\(\) argument 1\[1\]: cannot pass a value of type set"),
        ([1, 2, 3, {"price": Opaque()}], TypeError, r"^f\(\) argument 1\[3\]\['price'\]: .* type Opaque"),
        ({"a": {1: 2}}, TypeError, r"^f\(\) argument 1\['a'\]: dict keys must be str, not int"),
        ({"a": [2**64]}, OverflowError, r"^f\(\) argument 1\['a'\]\[0\]: 18446744073709551616 does not fit"),
        ([{"\ud800": 1}], ValueError, r"^f\(\) argument 1\[0\]\['\\ud800'\]: the key is not valid Unicode"),
        (["\udc80"], ValueError, r"^f\(\) argument 1\[0\]: string is not valid Unicode"),
        (cyclic(), ValueError, r"^f\(\) argument 1\[1\]\['self'\]: the list contains itself"),
        (deep(_abi.MAX_DEPTH + 1), ValueError, r"nest deeper than 64 levels"),
        (frozenset(), TypeError, r"^f\(\) argument 1: cannot pass a value of type frozenset"),
    ],
)
def test_caller_errors_name_the_path(value: Any, error: type[Exception], message: str) -> None:
    with pytest.raises(error, match=message):
        encode_value(value, "f() argument 1")


def test_shared_but_acyclic_values_encode() -> None:
    shared = [1, 2]
    assert decode_bytes(encode_value({"a": shared, "b": [shared, shared]}, "v")) == {
        "a": [1, 2], "b": [[1, 2], [1, 2]]
    }
    assert decode_bytes(encode_value(deep(_abi.MAX_DEPTH), "v")) == deep(_abi.MAX_DEPTH)


def test_any_parameters_take_any_value_and_typed_ones_do_not() -> None:
    from aionub._wire import encode_call

    fn = GuestFunction("f", (_abi.TAG_INT, _abi.TAG_ANY), _abi.TAG_ANY)
    assert str(fn) == "f(int, any) -> any"
    request = encode_call(fn, fn.prefix(), [1, {"a": [1.5, b"x"]}])
    assert request.endswith(encode_value({"a": [1.5, b"x"]}, "v"))
    with pytest.raises(TypeError, match=r"f\(\) argument 1 must be int, not list"):
        encode_call(fn, fn.prefix(), [[1], None])
    with pytest.raises(TypeError, match=r"f\(\) argument 2\['k'\]: cannot pass a value of type set"):
        encode_call(fn, fn.prefix(), [1, {"k": set()}])


def test_signatures_refuse_list_and_dict_tags() -> None:
    for tag in (_abi.TAG_LIST, _abi.TAG_DICT, 9):
        table = struct.pack("<I", 1) + encode_string(b"f") + bytes([tag, 0]) + struct.pack("<I", 0)
        with pytest.raises(GuestProtocolError, match=f"invalid type tag {tag}"):
            decode_ready(memoryview(table), len(table))


def test_any_result_takes_any_value() -> None:
    fn = GuestFunction("f", (), _abi.TAG_ANY)
    for value in (None, 1, "s", [1, {"a": b"b"}], {}):
        record = b"\x00" + encode_value(value, "v")
        assert decode_result(fn, output_with(record), len(record), "<test>") == value


# ---- the result, log and host-call decoders (without a VM) -----------------------------------

OUTPUT_SIZE = 4096


def output_with(record: bytes) -> memoryview:
    output = memoryview(bytearray(OUTPUT_SIZE))
    output[: len(record)] = record
    return output


def services(hosts: dict[str, Any] | None = None) -> GuestServices:
    return GuestServices(hosts or {}, 0, OUTPUT_SIZE, 1000)


@FUZZ
@given(records(), st.integers(0, 400), st.sampled_from(sorted(_abi.SIGNATURE_TAGS)), st.binary(max_size=4))
def test_call_result_decoder(data: bytes, cut: int, returns: int, tail: bytes) -> None:
    """A result record decodes to a value of the declared type, or raises
    GuestProtocolError (which poisons) or TypeError (the guest rejected the
    arguments: it does not); nothing else."""
    fn = GuestFunction("f", (), returns)
    length = min(cut, len(data))
    try:
        value = decode_result(fn, output_with(data[:length] + tail), length, "<fuzz>")
    except (GuestProtocolError, TypeError):
        return
    if returns == _abi.TAG_ANY:
        check_shape(value)
        return
    expected_type = {0: type(None), 1: bool, 2: int, 3: float, 4: str, 5: bytes}[returns]
    assert type(value) is expected_type


@FUZZ
@given(records(), st.integers(0, 400))
def test_log_record_decoder(data: bytes, cut: int) -> None:
    length = min(cut, len(data))
    try:
        services().emit_log(output_with(data[:length]), length)
    except GuestProtocolError:
        pass


@FUZZ
@given(records(), st.integers(0, 400))
def test_host_call_server(data: bytes, cut: int) -> None:
    length = min(cut, len(data))
    hosts = {"": lambda *a: None, "f": lambda *a: a[0] if a else None}
    output = output_with(data[:length])
    server = services(hosts)
    coro = server.serve_host_call(output, length)
    try:
        coro.send(None)  # sync host functions: it never suspends
    except StopIteration:
        pass
    except GuestProtocolError:
        return
    # Served: the reply in the buffer is well formed, OK or ERROR.
    r = Reader(output, OUTPUT_SIZE, "reply")
    status = r.u8()
    assert status in (_abi.REPLY_OK, _abi.REPLY_ERROR)
    if status == _abi.REPLY_OK:
        r.value()
    else:
        r.text()
        assert server.host_error is not None


SYS_OPS = [_abi.SYS_CLOCK, _abi.SYS_RANDOM, _abi.SYS_SET_FS, _abi.SYS_WRITE, _abi.SYS_READ, _abi.SYS_STAT,
           _abi.SYS_PREAD, 0, 99, 2**32 - 1]
FAST_OPERANDS = {_abi.SYS_CLOCK: 4, _abi.SYS_RANDOM: 4, _abi.SYS_SET_FS: 8}


@FUZZ
@given(st.sampled_from(SYS_OPS), records(), st.integers(0, 400))
def test_system_request_server(op: int, data: bytes, cut: int) -> None:
    """A system request (SLEEP aside: it needs an event loop) is answered
    with a reply that fits the buffer, or raises GuestProtocolError; a
    well-formed fast op, which the C core would have served, is an
    internal error; nothing else."""
    record = struct.pack("<I", op) + data
    length = min(cut, len(record))
    output = output_with(record[:length])
    server = services()
    server.sys.files = {"/": b"root", "/a": b"x" * 100}
    coro = server.sys.serve(output, length)
    try:
        coro.send(None)  # nothing but SLEEP suspends
    except StopIteration:
        pass
    except GuestProtocolError:
        return
    except aionub.SandboxError as exc:
        assert "internal error" in str(exc) and FAST_OPERANDS.get(op) == length - 4
        return
    result = struct.unpack_from("<q", output)[0]
    assert 8 <= server.output_used <= OUTPUT_SIZE
    if op in (_abi.SYS_READ, _abi.SYS_PREAD) and result >= 0:
        assert server.output_used == 8 + result
    if op not in (_abi.SYS_WRITE, _abi.SYS_READ, _abi.SYS_STAT, _abi.SYS_PREAD):
        assert result == -38  # ENOSYS


# ---- events -> exceptions --------------------------------------------------------------------------


@FUZZ
@given(
    kind=st.one_of(st.integers(1, 9), u32),
    vector=u64, error_code=u64, rip=u64, address=u64, detail=u64,
    exit_reason=st.one_of(st.sampled_from([2, 5, 6, 8, 9, 17]), u32),
    error=st.integers(-(2**31), 2**31 - 1),
    message=st.binary(max_size=199),
    record=records(),
    guard=u64,
)
def test_event_to_exception(
    kind: int, vector: int, error_code: int, rip: int, address: int, detail: int,
    exit_reason: int, error: int, message: bytes, record: bytes, guard: int,
) -> None:
    event = _native.ffi.new("struct ab_event *")
    event.kind = kind
    event.length = len(record)
    event.vector, event.error_code, event.rip, event.address = vector, error_code, rip, address
    event.detail, event.exit_reason, event.error = detail, exit_reason, error
    event.message = message
    layout = _native.ffi.new("struct ab_layout *")
    layout.guard_addr = guard
    exc = event_error(kind, event, memoryview(bytearray(record)), layout)
    assert isinstance(exc, aionub.SandboxError)
    assert isinstance(exc, aionub._exceptions.POISONING)
    str(exc)
    if kind == _native.EV_FAULT:
        assert isinstance(exc, aionub.GuestFault) and exc.vector == vector and exc.rip == rip
        if isinstance(exc, aionub.StackOverflow):
            assert vector == 14 and guard <= address < guard + 4096


# ---- the ELF loader ------------------------------------------------------------------------------------

ELF_HEADER = struct.Struct("<16sHHIQQQIHHHHHH")
PHDR = struct.Struct("<IIQQQQQQ")


def elf_validate(image: bytes, config: Any = None) -> tuple[int, str]:
    cfg = config if config is not None else aionub.SandboxConfig().to_native()
    errbuf = _native.ffi.new("char[]", 256)
    rc = _native.lib.ab_elf_validate(cfg, image, len(image), errbuf, 256)
    return rc, _native.ffi.string(errbuf).decode("utf-8", "replace")


def check_verdict(rc: int, message: str) -> None:
    assert rc in (0, -22), (rc, message)
    if rc:
        assert message.startswith(("elf: ", "config: ")), message


@pytest.fixture(scope="module")
def demo_elf() -> bytes:
    return Path(aionub.DEMO_GUEST).read_bytes()


def test_demo_guest_is_valid(demo_elf: bytes) -> None:
    assert elf_validate(demo_elf) == (0, "")


@FUZZ
@given(st.data())
def test_elf_mutations(demo_elf: bytes, data: st.DataObject) -> None:
    image = bytearray(demo_elf)
    header_area = 64 + 56 * 8
    for _ in range(data.draw(st.integers(1, 8))):
        where = data.draw(st.one_of(st.integers(0, header_area), st.integers(0, len(image) - 1)))
        width = data.draw(st.sampled_from([1, 2, 4, 8]))
        value = data.draw(st.one_of(
            st.sampled_from(
                [0, 1, 0x7F, 0x80, 0xFF, 0xFFFF, 0x7FFFFFFF, 0xFFFFFFFF, 2**63, 2**64 - 1, 0x100000, 0x1000]
            ),
            st.integers(0, 2**64 - 1),
        ))
        chunk = (value & ((1 << (8 * width)) - 1)).to_bytes(width, "little")
        image[where : where + width] = chunk
    cut = data.draw(st.one_of(st.just(len(image)), st.integers(0, len(image))))
    check_verdict(*elf_validate(bytes(image[:cut])))


segment = st.tuples(
    st.sampled_from([1, 1, 1, 2, 3, 4, 6, 0x6474E551]),  # PT_LOAD mostly, DYNAMIC, INTERP, NOTE, PHDR, GNU_STACK
    st.integers(0, 7),  # flags
    st.one_of(st.integers(0, 0x2000), u64),  # offset
    st.one_of(st.sampled_from([0, 0xFFF, 0x1000, 0x100000, 0x101000, 0x7FF000, 0x800000]), u64),  # vaddr
    st.one_of(st.integers(0, 0x3000), u64),  # filesz
    st.one_of(st.integers(0, 0x800000), u64),  # memsz
)


@FUZZ
@given(
    segments=st.lists(segment, max_size=20),
    entry=st.one_of(st.sampled_from([0x100000, 0x100010, 0]), u64),
    phoff=st.one_of(st.just(64), st.integers(0, 4096), u64),
    phnum_delta=st.integers(-2, 2),
    etype=st.sampled_from([2, 2, 2, 3, 1]),
    machine=st.sampled_from([62, 62, 62, 3]),
    ehsize=st.sampled_from([64, 64, 0, 52]),
    phentsize=st.sampled_from([56, 56, 32, 0]),
    file_size=st.integers(0, 0x3000),
)
def test_elf_from_fields(
    segments: list[tuple[int, ...]], entry: int, phoff: int, phnum_delta: int, etype: int,
    machine: int, ehsize: int, phentsize: int, file_size: int,
) -> None:
    ident = b"\x7fELF\x02\x01\x01" + bytes(9)
    phnum = max(0, min(0xFFFF, len(segments) + phnum_delta))
    header = ELF_HEADER.pack(ident, etype, machine, 1, entry, phoff, 0, 0, ehsize, phentsize, phnum, 64, 0, 0)
    table = b"".join(PHDR.pack(t, f, o, v, v, fs, ms, 0x1000) for t, f, o, v, fs, ms in segments)
    image = bytearray(max(file_size, 64))
    image[:64] = header
    if phoff + len(table) <= 0x10000:  # else the table lies outside the file
        image.extend(bytes(max(0, phoff + len(table) - len(image))))
        image[phoff : phoff + len(table)] = table
    check_verdict(*elf_validate(bytes(image)))


@FUZZ
@given(st.binary(max_size=512))
def test_elf_random_bytes(data: bytes) -> None:
    check_verdict(*elf_validate(data))
    check_verdict(*elf_validate(b"\x7fELF\x02\x01\x01" + data))


@FUZZ
@given(memory=u64, stack=u64, inp=u64, out=u64, offset=u32)
def test_config_validation(demo_elf: bytes, memory: int, stack: int, inp: int, out: int, offset: int) -> None:
    cfg = aionub.SandboxConfig().to_native()
    cfg.memory_size, cfg.stack_size, cfg.input_size, cfg.output_size = memory, stack, inp, out
    cfg.sig_rt_min_offset = offset
    rc, message = elf_validate(demo_elf, cfg)
    check_verdict(rc, message)
    if rc == 0:
        # Accepted: everything fits below memory_size, without wrapping.
        assert inp + out + stack + 0x100000 < memory <= 256 * 1024 * 1024


# ---- the long-run script still works ------------------------------------------------------------------


def test_fuzz_long_script_smoke(tmp_path: Path) -> None:
    import subprocess
    import sys

    script = Path(__file__).resolve().parent.parent / "scripts" / "fuzz_long.py"
    proc = subprocess.run(
        [sys.executable, str(script), "--inputs", "7000", "--seed", "1", "--run-accepted", "0", "--out", str(tmp_path)],
        capture_output=True, text=True, timeout=120,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "7,000 inputs in" in proc.stdout and "no failures" in proc.stdout
