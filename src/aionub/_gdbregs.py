"""The register file gdb sees: amd64's core and SSE registers in gdb's
numbering, the target description that names them (``target.xml``), and
their encoding in ``g``/``p`` replies (little-endian hex)."""

from __future__ import annotations

import struct

from ._debug import GPR_FIELDS, DebugError, Registers

__all__ = ("NUM_REGS", "REGISTERS", "TARGET_XML", "encode_registers", "encode_register", "decode_gpr_block", "gpr_name")

_GPR_NAMES = ("rax", "rbx", "rcx", "rdx", "rsi", "rdi", "rbp", "rsp",
              "r8", "r9", "r10", "r11", "r12", "r13", "r14", "r15")
_SEGMENTS = ("cs", "ss", "ds", "es", "fs", "gs")
_X87 = ("fctrl", "fstat", "ftag", "fiseg", "fioff", "foseg", "fooff", "fop")

#: (name, bytes, type, group) in gdb's amd64 register numbering.
REGISTERS: tuple[tuple[str, int, str, str], ...] = (
    *((name, 8, "data_ptr" if name in ("rbp", "rsp") else "int64", "general") for name in _GPR_NAMES),
    ("rip", 8, "code_ptr", "general"),
    ("eflags", 4, "int32", "general"),
    *((name, 4, "int32", "general") for name in _SEGMENTS),
    *((f"st{i}", 10, "i387_ext", "float") for i in range(8)),
    *((name, 4, "int32", "float") for name in _X87),
    *((f"xmm{i}", 16, "vec128", "vector") for i in range(16)),
    ("mxcsr", 4, "int32", "vector"),
)
NUM_REGS = len(REGISTERS)
_FIRST_SSE = 40


def _target_xml() -> bytes:
    def reg(number: int) -> str:
        name, size, typ, group = REGISTERS[number]
        return f'    <reg name="{name}" bitsize="{size * 8}" type="{typ}" regnum="{number}" group="{group}"/>\n'

    vec = (
        '    <vector id="v4f" type="ieee_single" count="4"/>\n'
        '    <vector id="v2d" type="ieee_double" count="2"/>\n'
        '    <vector id="v16i8" type="int8" count="16"/>\n'
        '    <vector id="v8i16" type="int16" count="8"/>\n'
        '    <vector id="v4i32" type="int32" count="4"/>\n'
        '    <vector id="v2i64" type="int64" count="2"/>\n'
        '    <union id="vec128">\n'
        '      <field name="v4_float" type="v4f"/>\n'
        '      <field name="v2_double" type="v2d"/>\n'
        '      <field name="v16_int8" type="v16i8"/>\n'
        '      <field name="v8_int16" type="v8i16"/>\n'
        '      <field name="v4_int32" type="v4i32"/>\n'
        '      <field name="v2_int64" type="v2i64"/>\n'
        '      <field name="uint128" type="uint128"/>\n'
        '    </union>\n'
    )
    text = (
        '<?xml version="1.0"?>\n<!DOCTYPE target SYSTEM "gdb-target.dtd">\n<target version="1.0">\n'
        '  <architecture>i386:x86-64</architecture>\n'
        '  <feature name="org.gnu.gdb.i386.core">\n'
        + "".join(reg(n) for n in range(_FIRST_SSE))
        + '  </feature>\n  <feature name="org.gnu.gdb.i386.sse">\n'
        + vec
        + "".join(reg(n) for n in range(_FIRST_SSE, NUM_REGS))
        + "  </feature>\n</target>\n"
    )
    return text.encode()


TARGET_XML = _target_xml()


def _x87(fx: bytes) -> dict[str, int]:
    fcw, fsw, ftw_abridged, fop, fip, fdp = struct.unpack_from("<HHBxHQQ", fx, 0)
    top = (fsw >> 11) & 7
    tag = 0
    for physical in range(8):
        if not ftw_abridged & (1 << physical):
            value = 3  # empty
        else:
            raw = fx[32 + 16 * ((physical - top) % 8) :][:10]
            exponent = int.from_bytes(raw[8:10], "little") & 0x7FFF
            mantissa = int.from_bytes(raw[:8], "little")
            if exponent == 0x7FFF:
                value = 2  # special
            elif exponent == 0:
                value = 1 if mantissa == 0 else 2  # zero, or denormal (special)
            else:
                value = 0  # valid
        tag |= value << (2 * physical)
    return {"fctrl": fcw, "fstat": fsw, "ftag": tag, "fiseg": (fip >> 32) & 0xFFFF,
            "fioff": fip & 0xFFFF_FFFF, "foseg": (fdp >> 32) & 0xFFFF, "fooff": fdp & 0xFFFF_FFFF,
            "fop": fop & 0x7FF}


def _values(regs: Registers) -> list[bytes]:
    fx = regs.fxsave
    x87 = _x87(fx)
    out: list[bytes] = []
    for number, (name, size, _, _) in enumerate(REGISTERS):
        if name in regs.gpr:
            value = regs.gpr[name]
        elif name == "eflags":
            value = regs.gpr["rflags"]
        elif name in regs.segments:
            value = regs.segments[name]
        elif name.startswith("st"):
            out.append(fx[32 + 16 * int(name[2:]) :][:10])
            continue
        elif name in x87:
            value = x87[name]
        elif name.startswith("xmm"):
            out.append(fx[160 + 16 * int(name[3:]) :][:16])
            continue
        else:  # mxcsr
            value = struct.unpack_from("<I", fx, 24)[0]
        out.append((value & ((1 << (8 * size)) - 1)).to_bytes(size, "little"))
        assert number < NUM_REGS
    return out


def encode_registers(regs: Registers) -> bytes:
    """The ``g`` reply."""
    return b"".join(_values(regs)).hex().encode()


def encode_register(regs: Registers, number: int) -> bytes:
    """The ``p`` reply; the empty reply for a number gdb should not ask."""
    if not 0 <= number < NUM_REGS:
        return b"E45"
    return _values(regs)[number].hex().encode()


def gpr_name(number: int) -> str | None:
    """The struct ab_kvm_regs field of a writable register number."""
    if 0 <= number < 16:
        return _GPR_NAMES[number]
    if number == 16:
        return "rip"
    if number == 17:
        return "rflags"
    return None


def decode_gpr_block(raw: bytes) -> dict[str, int]:
    """The writable registers of a ``G`` packet's block (the rest, segment
    and FPU registers, is ignored: the vCPU thread owns them)."""
    if len(raw) < 17 * 8 + 4:
        raise DebugError(f"a G packet of {len(raw)} bytes is too short")
    values = dict(zip((*_GPR_NAMES, "rip"), struct.unpack_from("<17Q", raw, 0), strict=True))
    values["rflags"] = struct.unpack_from("<I", raw, 17 * 8)[0]
    assert set(values) - {"rflags"} <= set(GPR_FIELDS)
    return values
