"""Everything a guest can observe in a sandbox, as one comparable value.

``dump(sb)`` reads an idle sandbox's guest memory and its whole vCPU state
through ``ab_sandbox_read_state`` (native/statedump.c: its own ioctls,
independent of the snapshot code, reading more than restore writes), and
names every piece of it: each general, segment, control and debug register
field, each XSAVE component (split by the guest's CPUID leaf 0xD), XCR0,
pending events, the MP state and every MSR KVM lists. ``diff(a, b)`` says
field by field (and, for memory, page by page) what differs.

All reaching into aionub's private attributes happens in ``_native_ptr``
and ``_guest_memory``, so that a refactoring of the Sandbox class has one
place to update here.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import aionub
from aionub._native import ffi, lib

PAGE = 4096

# ---- the only two reaches into private attributes -----------------------------------


def _native_ptr(sb: aionub.Sandbox) -> Any:
    """The sandbox's ``ab_sandbox *``."""
    native = sb._native
    assert native is not None, "the sandbox is closed"
    return native.ptr


def _guest_memory(sb: aionub.Sandbox) -> bytes:
    """A copy of all of the sandbox's guest memory."""
    native = sb._native
    assert native is not None, "the sandbox is closed"
    return bytes(native.memory)


# ---- names ----------------------------------------------------------------------------

#: Names for the MSRs KVM lists here (and the architectural extras the dump
#: reads); others are shown by number only.
MSR_NAMES = {
    0x10: "IA32_TSC",
    0x11: "KVM_WALL_CLOCK",
    0x12: "KVM_SYSTEM_TIME",
    0x34: "SMI_COUNT",
    0x3B: "IA32_TSC_ADJUST",
    0x48: "IA32_SPEC_CTRL",
    0x8B: "IA32_UCODE_REV",
    0xCE: "PLATFORM_INFO",
    0x10A: "IA32_ARCH_CAPABILITIES",
    0x140: "MISC_FEATURES_ENABLES",
    0x174: "IA32_SYSENTER_CS",
    0x175: "IA32_SYSENTER_ESP",
    0x176: "IA32_SYSENTER_EIP",
    0x17A: "IA32_MCG_STATUS",
    0x17B: "IA32_MCG_CTL",
    0x1A0: "IA32_MISC_ENABLE",
    0x1D9: "IA32_DEBUGCTL",
    0x1DB: "LASTBRANCHFROMIP",
    0x1DC: "LASTBRANCHTOIP",
    0x1DD: "LASTINTFROMIP",
    0x1DE: "LASTINTTOIP",
    0x1FC: "IA32_POWER_CTL",
    0x277: "IA32_PAT",
    0x345: "IA32_PERF_CAPABILITIES",
    0x6E0: "IA32_TSC_DEADLINE",
    0xC0000080: "EFER",
    0xC0000081: "STAR",
    0xC0000082: "LSTAR",
    0xC0000083: "CSTAR",
    0xC0000084: "SFMASK",
    0xC0000100: "FS_BASE",
    0xC0000101: "GS_BASE",
    0xC0000102: "KERNEL_GS_BASE",
    0xC0000103: "TSC_AUX",
    0xC0010015: "AMD_HWCR",
    0xC0010117: "AMD_VM_HSAVE_PA",
    0xC001011F: "AMD_VIRT_SPEC_CTRL",
    0x4B564D00: "KVM_WALL_CLOCK_NEW",
    0x4B564D01: "KVM_SYSTEM_TIME_NEW",
    0x4B564D02: "KVM_ASYNC_PF_EN",
    0x4B564D03: "KVM_STEAL_TIME",
    0x4B564D04: "KVM_PV_EOI_EN",
    0x4B564D05: "KVM_POLL_CONTROL",
    0x4B564D06: "KVM_ASYNC_PF_INT",
    0x4B564D07: "KVM_ASYNC_PF_ACK",
}


def msr_field(index: int) -> str:
    name = MSR_NAMES.get(index)
    return f"msr.{index:#x}" + (f" ({name})" if name else "")


#: Fields that legitimately differ between two dumps of the same state.
#: Each one is justified; tests/test_restore_exact.py checks that two dumps
#: of an idle, untouched sandbox differ in nothing else.
EXCLUDED = {
    # Guest time: the TSC counts while the host works, and restore leaves it
    # running forward on purpose (a guest must never see time go back).
    msr_field(0x10),
}

# XSAVE component names by index (Intel SDM vol. 1, 13.1): how the dump
# splits each component into registers, as (prefix, count); components
# not named here are compared as raw bytes.
XSAVE_REGISTERS = {
    2: ("ymm{}_hi128", 16),  # AVX: the upper halves of ymm0-15
    5: ("k{}", 8),  # AVX-512 opmask registers
    6: ("zmm{}_hi256", 16),  # AVX-512: the upper halves of zmm0-15
    7: ("zmm{}", 16),  # AVX-512: zmm16-31, numbered from 16 below
    9: ("pkru", 1),
}
XSAVE_NAMES = {2: "avx", 5: "opmask", 6: "zmm_hi256", 7: "hi16_zmm", 9: "pkru"}

# The legacy region (FXSAVE layout, fixed by the architecture) and the
# XSAVE header: (name, offset, size).
XSAVE_LEGACY = [
    ("fcw", 0, 2),
    ("fsw", 2, 2),
    ("ftw", 4, 1),
    ("reserved_5", 5, 1),
    ("fop", 6, 2),
    ("fip", 8, 8),
    ("fdp", 16, 8),
    ("mxcsr", 24, 4),
    ("mxcsr_mask", 28, 4),
    *((f"st{i}", 32 + 16 * i, 16) for i in range(8)),
    *((f"xmm{i}", 160 + 16 * i, 16) for i in range(16)),
    ("reserved_416", 416, 48),
    ("available_464", 464, 48),
]
XSAVE_HEADER = [("xstate_bv", 512, 8), ("xcomp_bv", 520, 8), ("reserved_528", 528, 48)]
INT_FIELD_MAX = 8  # byte fields up to this size are shown as (little-endian) integers


# ---- reading --------------------------------------------------------------------------


@dataclass(frozen=True)
class Dump:
    memory: bytes
    fields: dict[str, int | bytes | None]  # None: an MSR KVM refused to read

    def __getitem__(self, name: str) -> int | bytes | None:
        return self.fields[name]


def _walk(prefix: str, value: Any, ctype: Any, out: dict[str, int | bytes | None]) -> None:
    """Name every leaf of a cffi value of type ``ctype``: nested structs by
    field, arrays of bytes as bytes, other arrays by index."""
    if ctype.kind == "struct":
        for name, field in ctype.fields:
            _walk(f"{prefix}.{name}", getattr(value, name), field.type, out)
    elif ctype.kind == "array":
        if ctype.item.kind == "primitive" and ffi.sizeof(ctype.item) == 1:
            out[prefix] = bytes(ffi.buffer(value))
        else:
            for i in range(ctype.length):
                _walk(f"{prefix}[{i}]", value[i], ctype.item, out)
    else:
        out[prefix] = int(value)


def xsave_components() -> list[tuple[int, int, int]]:
    """(index, offset, size) of each user XSAVE component beyond x87/SSE."""
    buf = ffi.new("struct ab_xsave_component[]", 64)
    n = lib.ab_xsave_components(buf, 64)
    assert n >= 0, f"ab_xsave_components: {n}"
    return [(int(buf[i].index), int(buf[i].offset), int(buf[i].size)) for i in range(n)]


def _split_xsave(area: bytes, out: dict[str, int | bytes | None]) -> None:
    covered = bytearray(len(area))

    def put(name: str, offset: int, size: int) -> None:
        out[name] = area[offset : offset + size]
        covered[offset : offset + size] = b"\1" * size

    for name, offset, size in XSAVE_LEGACY:
        put(f"xsave.legacy.{name}", offset, size)
    for name, offset, size in XSAVE_HEADER:
        put(f"xsave.header.{name}", offset, size)
    for index, offset, size in xsave_components():
        component = XSAVE_NAMES.get(index, f"component{index}")
        pattern, count = XSAVE_REGISTERS.get(index, ("raw", 1))
        each = size // count
        first = 16 if index == 7 else 0
        for i in range(count):
            put(f"xsave.{component}.{pattern.format(first + i)}", offset + i * each, each)
    # Whatever no component claims (gaps, the tail of the buffer) is
    # compared too, so that nothing in the area can escape.
    start = None
    for i, c in enumerate([*covered, 1]):
        if not c and start is None:
            start = i
        elif c and start is not None:
            out[f"xsave.uncovered[{start:#x}:{i:#x}]"] = bytes(area[start:i])
            start = None


def read_vcpu(sb: aionub.Sandbox) -> dict[str, int | bytes | None]:
    """Every vCPU state field of an idle sandbox, by name."""
    ptr = _native_ptr(sb)
    state = ffi.new("struct ab_vcpu_state *")
    size = int(lib.ab_sandbox_xsave_size(ptr))
    xsave = ffi.new("uint8_t[]", size)
    rc = lib.ab_sandbox_read_state(ptr, state, xsave, size)
    assert rc == 0, f"ab_sandbox_read_state: {rc}"
    fields: dict[str, int | bytes | None] = {}
    for part in ("regs", "sregs", "fpu", "events", "debugregs", "xcrs"):
        value = getattr(state, part)
        _walk(part, value, ffi.typeof(value), fields)
    fields["mp_state"] = int(state.mp_state)
    for i in range(state.nmsrs):
        msr = state.msrs[i]
        fields[msr_field(int(msr.index))] = int(msr.value) if msr.ok else None
    _split_xsave(bytes(ffi.buffer(xsave, size)), fields)
    return fields


def dump(sb: aionub.Sandbox) -> Dump:
    """Guest memory and every vCPU state field of an idle sandbox."""
    return Dump(_guest_memory(sb), read_vcpu(sb))


# ---- comparing --------------------------------------------------------------------------


def _show(value: int | bytes | None) -> str:
    if value is None:
        return "unreadable"
    if isinstance(value, int):
        return hex(value)
    if len(value) <= INT_FIELD_MAX:
        return hex(int.from_bytes(value, "little"))
    return value.hex() if len(value) <= 64 else f"{len(value)} bytes"


def _bytes_diff(a: bytes, b: bytes) -> str:
    first = next(i for i in range(min(len(a), len(b))) if a[i] != b[i]) if len(a) == len(b) else 0
    return f"first difference at byte {first}: {a[first:first + 16].hex()} != {b[first:first + 16].hex()}"


def memory_diff(a: bytes, b: bytes) -> list[str]:
    """One line per differing page: its address and first differing byte."""
    if len(a) != len(b):
        return [f"memory: {len(a)} bytes != {len(b)} bytes"]
    if a == b:
        return []
    ma, mb = memoryview(a), memoryview(b)
    lines = []
    for page in range(0, len(a), PAGE):
        pa, pb = ma[page : page + PAGE], mb[page : page + PAGE]
        if pa != pb:
            i = next(i for i in range(PAGE) if pa[i] != pb[i])
            lines.append(f"memory page {page:#x}: byte {page + i:#x} is {pa[i]:#04x} != {pb[i]:#04x}")
    return lines


def diff(a: Dump, b: Dump, *, exclude: set[str] | frozenset[str] = frozenset()) -> list[str]:
    """Every difference between two dumps, apart from the fields in
    ``EXCLUDED`` (and ``exclude``): memory page by page, then registers
    field by field. Empty if they are equal."""
    skip = EXCLUDED | set(exclude)
    lines = memory_diff(a.memory, b.memory)
    for name in sorted(a.fields.keys() | b.fields.keys()):
        if name in skip:
            continue
        if name not in a.fields or name not in b.fields:
            lines.append(f"{name}: only in {'the first' if name in a.fields else 'the second'} dump")
            continue
        va, vb = a.fields[name], b.fields[name]
        if va == vb:
            continue
        if isinstance(va, bytes) and isinstance(vb, bytes) and len(va) > INT_FIELD_MAX:
            lines.append(f"{name}: {_bytes_diff(va, vb)}")
        else:
            lines.append(f"{name}: {_show(va)} != {_show(vb)}")
    return lines
