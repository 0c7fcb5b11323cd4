"""cffi build script (out-of-line API mode) for the host core.

The C declarations come from ``native/include/aionub/host.h`` (the region
between its CDEF markers), so the header is the single source of the binding.
"""

from __future__ import annotations

import pathlib

from cffi import FFI

NATIVE = pathlib.Path(__file__).resolve().parent
SOURCES = [
    "kvm.c",
    "elf.c",
    "memory.c",
    "interrupt.c",
    "signal.c",
    "vm.c",
    "vcpu.c",
    "sysfast.c",
    "limits.c",
    "placement.c",
    "vcpustate.c",
    "sandbox.c",
    "snapshot.c",
    "backing.c",
    "spawn.c",
    "snapfile.c",
    "statedump.c",
    "debug.c",
]


def _cdef() -> str:
    header = (NATIVE / "include" / "aionub" / "host.h").read_text()
    begin = header.index("/* CDEF BEGIN */") + len("/* CDEF BEGIN */")
    end = header.index("/* CDEF END */")
    return header[begin:end]


ffibuilder = FFI()
ffibuilder.cdef(_cdef())
ffibuilder.set_source(
    "aionub._aionub_native",
    '#include "aionub/host.h"',
    sources=[str(NATIVE / name) for name in SOURCES],
    include_dirs=[str(NATIVE / "include"), str(NATIVE)],
    extra_compile_args=["-std=gnu11", "-O2", "-Wall", "-Wextra", "-Wno-unused-parameter"],
    libraries=["pthread", "rt"],
)

if __name__ == "__main__":
    ffibuilder.compile(tmpdir=str(NATIVE.parent / "build" / "cffi"), verbose=True)
