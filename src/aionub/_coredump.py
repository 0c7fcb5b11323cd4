"""Crash dumps: an ELF core file of a stopped guest that ``gdb guest.elf
core`` opens — the guest's registers (PT_NOTE: NT_PRSTATUS in the x86-64
Linux layout, NT_FPREGSET) and every mapped page of guest memory (PT_LOAD
segments at guest virtual addresses, found through the guest's page
tables, one segment per run of pages with the same permissions)."""

from __future__ import annotations

import os
import struct
import tempfile
import time

from ._debug import read_registers
from ._native import NativeSandbox

__all__ = ("write_core", "core_segments")

_PAGE = 4096
_PTE_P, _PTE_RW, _PTE_US, _PTE_NX = 1, 2, 4, 1 << 63
_ADDR = 0x000F_FFFF_FFFF_F000

ET_CORE = 4
EM_X86_64 = 62
PT_LOAD, PT_NOTE = 1, 4
PF_X, PF_W, PF_R = 1, 2, 4
NT_PRSTATUS, NT_FPREGSET, NT_PRPSINFO = 1, 2, 3

# struct user_regs_struct (x86-64), the order of pr_reg in NT_PRSTATUS.
_PR_REG = ("r15", "r14", "r13", "r12", "rbp", "rbx", "r11", "r10", "r9", "r8", "rax", "rcx", "rdx",
           "rsi", "rdi", "orig_rax", "rip", "cs", "rflags", "rsp", "ss", "fs_base", "gs_base",
           "ds", "es", "fs", "gs")


def core_segments(native: NativeSandbox, cr3: int) -> list[tuple[int, int, int]]:
    """(virtual address, size, PF_* flags) of the mapped guest memory. The
    host builds the tables (identity mapped, 4 KiB pages, one PML4 and one
    PDPT entry); each entry is still checked against guest memory."""
    memory = native.memory
    size = int(native.layout.memory_size)

    def entry(table: int, index: int) -> int:
        at = (table & _ADDR) + index * 8
        if at + 8 > size:
            return 0
        return int(struct.unpack_from("<Q", memory, at)[0])

    runs: list[tuple[int, int, int]] = []
    for i4 in range(512):
        e4 = entry(cr3, i4)
        if not e4 & _PTE_P:
            continue
        for i3 in range(512):
            e3 = entry(e4, i3)
            if not e3 & _PTE_P or e3 & 0x80:
                continue
            for i2 in range(512):
                e2 = entry(e3, i2)
                if not e2 & _PTE_P or e2 & 0x80:
                    continue
                for i1 in range(512):
                    e1 = entry(e2, i1)
                    if not e1 & _PTE_P or (e1 & _ADDR) + _PAGE > size:
                        continue
                    vaddr = (i4 << 39) | (i3 << 30) | (i2 << 21) | (i1 << 12)
                    if vaddr != e1 & _ADDR:
                        continue  # not identity mapped: never built by the host
                    flags = PF_R | (PF_W if e1 & _PTE_RW else 0) | (0 if e1 & _PTE_NX else PF_X)
                    if runs and runs[-1][0] + runs[-1][1] == vaddr and runs[-1][2] == flags:
                        start, length, _ = runs[-1]
                        runs[-1] = (start, length + _PAGE, flags)
                    else:
                        runs.append((vaddr, _PAGE, flags))
    return runs


def _pad4(data: bytes) -> bytes:
    return data + b"\0" * (-len(data) % 4)


def _note(name: bytes, kind: int, desc: bytes) -> bytes:
    name += b"\0"
    return struct.pack("<III", len(name), len(desc), kind) + _pad4(name) + _pad4(desc)


def _prstatus(signal: int, gpr: dict[str, int], segments: dict[str, int], fs_base: int, gs_base: int) -> bytes:
    values = dict(gpr)
    values.update(segments)
    values["orig_rax"] = 0xFFFF_FFFF_FFFF_FFFF
    values["fs_base"] = fs_base
    values["gs_base"] = gs_base
    head = struct.pack("<iiih2xQQiiii", signal, 0, 0, signal, 0, 0, 1, 0, 1, 1)
    head += b"\0" * (4 * 16)  # utime, stime, cutime, cstime
    regs = struct.pack("<27Q", *(values[name] & 0xFFFF_FFFF_FFFF_FFFF for name in _PR_REG))
    return head + regs + struct.pack("<i4x", 1)  # pr_fpvalid


def _prpsinfo(label: str) -> bytes:
    fname = os.path.basename(label).encode()[:15]
    args = label.encode()[:79]
    return struct.pack("<bcbb4xQIIiiii16s80s", 0, b"R", 0, 0, 0, 0, 0, 1, 0, 1, 1, fname, args)


def write_core(native: NativeSandbox, directory: str, label: str, signal: int) -> str:
    """Write a core file of the stopped guest into ``directory`` and return
    its path (``aionub-core-<name>-<pid>-<time>``, written whole to a
    temporary file, then renamed)."""
    regs = read_registers(native)
    cr3 = _cr3(native)
    segments = core_segments(native, cr3)
    notes = (_note(b"CORE", NT_PRSTATUS, _prstatus(signal, regs.gpr, regs.segments, regs.fs_base, regs.gs_base))
             + _note(b"CORE", NT_PRPSINFO, _prpsinfo(label))
             + _note(b"CORE", NT_FPREGSET, regs.fxsave))
    nphdr = 1 + len(segments)
    ehsize, phentsize = 64, 56
    offset = ehsize + nphdr * phentsize
    notes_at = offset
    data_at = (notes_at + len(notes) + _PAGE - 1) // _PAGE * _PAGE
    header = struct.pack(
        "<4sBBBBB7xHHIQQQIHHHHHH", b"\x7fELF", 2, 1, 1, 0, 0,
        ET_CORE, EM_X86_64, 1, 0, ehsize, 0, 0, ehsize, phentsize, nphdr, 64, 0, 0,
    )
    phdrs = struct.pack("<IIQQQQQQ", PT_NOTE, 0, notes_at, 0, 0, len(notes), 0, 4)
    at = data_at
    for vaddr, length, flags in segments:
        phdrs += struct.pack("<IIQQQQQQ", PT_LOAD, flags, at, vaddr, 0, length, length, _PAGE)
        at += length
    os.makedirs(directory, exist_ok=True)
    name = "".join(c if c.isalnum() or c in "-_." else "_" for c in os.path.basename(label))[:40]
    final = os.path.join(directory, f"aionub-core-{name}-{os.getpid()}-{time.time_ns()}")
    fd, tmp = tempfile.mkstemp(prefix=".aionub-core-", dir=directory)
    try:
        with os.fdopen(fd, "wb") as out:
            out.write(header + phdrs + notes)
            out.write(b"\0" * (data_at - out.tell()))
            memory = native.memory
            for vaddr, length, _ in segments:
                out.write(memory[vaddr : vaddr + length])
        os.replace(tmp, final)
    except BaseException:
        os.unlink(tmp)
        raise
    return final


def _cr3(native: NativeSandbox) -> int:
    from ._native import ffi, lib

    regs = ffi.new("struct ab_kvm_regs *")
    sregs = ffi.new("struct ab_kvm_sregs *")
    in_stub = ffi.new("int *")
    rc = lib.ab_sandbox_guest_regs(native.ptr, regs, sregs, in_stub)
    if rc < 0:
        raise OSError(-rc, f"cannot read the guest's registers: {os.strerror(-rc)}")
    return int(sregs.cr3)
