"""Building the guest's C library: musl, compiled for aionub guests.

This module imports only the standard library: ``setup.py`` loads it by file
path to build the libc before the package itself exists.

The sources are a pinned copy of musl that a registry package provides
(``_sources.py`` fetches and checks it). musl ships no build of its own
that we run: this module is the build. It follows musl's Makefile for
x86_64 (the same source selection, flags and generated headers), with two
differences that make up the guest port:

* ``native/guest/libc/syscall_arch.h`` comes first on the include path, so
  every system call becomes a call into the guest runtime (no ``syscall``
  instruction, no CPL0 code);
* the x86_64 assembly files that issue ``syscall`` themselves are left out
  (:data:`GENERIC_INSTEAD`), so musl's generic C version of each is built
  instead, and those come through ``syscall_arch.h`` too.

The result is a directory with ``include/`` (musl's public headers, as
``make install-headers`` lays them out) and ``lib/libc.a``, cached under a
key that covers the sources, the port files, the flags and the compiler.
"""

from __future__ import annotations

import hashlib
import os
import re
import shutil
import subprocess
import tempfile
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

__all__ = [
    "MUSL_VERSION",
    "LibcBuildError",
    "musl_sources",
    "build_libc",
]

MUSL_VERSION = "1.2.5"

#: x86_64 files that execute ``syscall`` directly; musl's generic C file of
#: the same name (next directory up) is built in their place.
GENERIC_INSTEAD = frozenset(
    {
        "src/signal/x86_64/restore.s",
        "src/process/x86_64/vfork.s",
        "src/thread/x86_64/clone.s",
        "src/thread/x86_64/syscall_cp.s",
        "src/thread/x86_64/__unmapself.s",
        "src/thread/x86_64/__set_thread_area.s",
    }
)

#: Flags from musl's configure for gcc on x86_64, plus what a static,
#: non-PIC guest needs. The libc itself is built without the stack
#: protector (musl sets the canary up from inside it) and without loop
#: pattern distribution (which would turn memset's own loop into a call to
#: memset).
LIBC_CFLAGS: tuple[str, ...] = (
    "-std=c99",
    "-nostdinc",
    "-ffreestanding",
    "-fexcess-precision=standard",
    "-frounding-math",
    "-fno-strict-aliasing",
    "-Wa,--noexecstack",
    "-D_XOPEN_SOURCE=700",
    "-O2",
    "-pipe",
    "-fomit-frame-pointer",
    "-fno-unwind-tables",
    "-fno-asynchronous-unwind-tables",
    "-ffunction-sections",
    "-fdata-sections",
    "-fno-stack-protector",
    "-fno-tree-loop-distribute-patterns",
    "-fcf-protection=none",
    "-fno-pic",
    "-fno-pie",
    "-w",
)

#: Files whose presence shows the tree is a complete musl (later packagings
#: of musl dropped many sources in favour of their own code).
REQUIRED_FILES = (
    "src/math/sin.c",
    "src/math/pow.c",
    "src/string/memcpy.c",
    "src/string/strlen.c",
    "src/stdlib/qsort.c",
    "src/stdlib/strtod.c",
    "src/stdio/vfprintf.c",
    "src/malloc/mallocng/malloc.c",
    "src/env/__libc_start_main.c",
    "arch/x86_64/bits/alltypes.h.in",
    "arch/x86_64/bits/syscall.h.in",
    "include/alltypes.h.in",
    "src/internal/version.h",
)


#: The libraries musl folds into libc.a (its Makefile installs them empty).
EMPTY_LIBS = ("m", "rt", "pthread", "crypt", "util", "xnet", "resolv", "dl")


class LibcBuildError(Exception):
    """The guest libc could not be built."""


def check_tree(musl: Path) -> None:
    missing = [f for f in REQUIRED_FILES if not (musl / f).is_file()]
    if missing:
        raise LibcBuildError(
            f"{musl} is not a complete musl {MUSL_VERSION} source tree: missing {', '.join(missing)}"
        )
    version = (musl / "src/internal/version.h").read_text()
    if f'"{MUSL_VERSION}"' not in version:
        raise LibcBuildError(f"{musl} is not musl {MUSL_VERSION}: version.h says {version.strip()!r}")


def musl_sources(musl: Path) -> list[Path]:
    """The sources of libc.a, selected as musl's Makefile does: every
    ``src/*/*.c`` and ``src/malloc/mallocng/*.c``, with an ``x86_64/``
    file of the same name replacing the generic one."""
    src = musl / "src"
    dirs = sorted(d for d in src.iterdir() if d.is_dir())
    dirs.append(src / "malloc" / "mallocng")
    chosen: dict[str, Path] = {}
    for d in dirs:
        for f in sorted(d.glob("*.c")):
            chosen[(d / f.stem).relative_to(musl).as_posix()] = f
    for d in dirs:
        arch = d / "x86_64"
        if not arch.is_dir():
            continue
        for f in sorted(arch.iterdir()):
            if f.suffix not in (".c", ".s", ".S"):
                continue
            if f.relative_to(musl).as_posix() in GENERIC_INSTEAD:
                continue
            chosen[(d / f.stem).relative_to(musl).as_posix()] = f
    return [chosen[k] for k in sorted(chosen)]


# ---- generated headers (musl's Makefile: obj/include/bits/*) -----------------------------

_TYPEDEF = re.compile(r"^TYPEDEF (.*) ([^ ]*);$")
_TAGGED = re.compile(r"^(STRUCT|UNION) *([^ ]*) (.*);$")


def _mkalltypes(text: str) -> str:
    """What musl's tools/mkalltypes.sed does to alltypes.h.in."""
    out = []
    for line in text.splitlines():
        m = _TYPEDEF.match(line)
        if m:
            t, name = m.groups()
            out += [
                f"#if defined(__NEED_{name}) && !defined(__DEFINED_{name})",
                f"typedef {t} {name};",
                f"#define __DEFINED_{name}",
                "#endif",
                "",
            ]
            continue
        m = _TAGGED.match(line)
        if m:
            kind, name, body = m.groups()
            kw = kind.lower()
            out += [
                f"#if defined(__NEED_{kw}_{name}) && !defined(__DEFINED_{kw}_{name})",
                f"{kw} {name} {body};",
                f"#define __DEFINED_{kw}_{name}",
                "#endif",
                "",
            ]
            continue
        out.append(line)
    return "\n".join(out) + "\n"


def _generated_headers(musl: Path) -> dict[str, str]:
    arch = musl / "arch/x86_64/bits"
    alltypes = (arch / "alltypes.h.in").read_text() + (musl / "include/alltypes.h.in").read_text()
    syscall_in = (arch / "syscall.h.in").read_text()
    sys_names = "".join(
        line.replace("__NR_", "SYS_", 1) + "\n"
        for line in syscall_in.splitlines()
        if "__NR_" in line
    )
    return {
        "bits/alltypes.h": _mkalltypes(alltypes),
        "bits/syscall.h": syscall_in + sys_names,
    }


_NR = re.compile(r"^#define __NR_(\w+)\s+(\d+)\s*$")


def _syscall_names_header(musl: Path) -> str:
    """The guest runtime's table of system call names (for its ENOSYS log)."""
    entries = []
    for line in (musl / "arch/x86_64/bits/syscall.h.in").read_text().splitlines():
        m = _NR.match(line)
        if m:
            entries.append(f'    [{m.group(2)}] = "{m.group(1)}",')
    return (
        "/* Generated by aionub's libc build from musl's arch/x86_64/bits/syscall.h.in. */\n"
        "static const char *const ab__syscall_names[] = {\n" + "\n".join(entries) + "\n};\n"
    )


def install_headers(musl: Path, dest: Path) -> None:
    """musl's ``make install-headers``: include/, then arch/generic/bits,
    then arch/x86_64/bits over them, then the generated bits."""
    for base in (musl / "include", musl / "arch/generic", musl / "arch/x86_64"):
        for f in sorted(base.rglob("*.h")):
            rel = f.relative_to(base)
            if base != musl / "include" and rel.parts[0] != "bits":
                continue  # arch/*/ also holds internal headers
            target = dest / rel
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(f, target)
    for name, text in _generated_headers(musl).items():
        (dest / name).write_text(text)
    (dest / "ab_syscall_names.h").write_text(_syscall_names_header(musl))


# ---- the build ---------------------------------------------------------------------------


def _compiler_identity(cc: Sequence[str]) -> str:
    proc = subprocess.run([*cc, "--version"], capture_output=True, text=True, check=False)
    return proc.stdout.splitlines()[0] if proc.returncode == 0 and proc.stdout else cc[0]


def cache_key(musl: Path, port_dir: Path, cc: Sequence[str]) -> str:
    """A digest of everything the result depends on."""
    h = hashlib.sha256()
    h.update(f"musl {MUSL_VERSION}\0{' '.join(LIBC_CFLAGS)}\0{_compiler_identity(cc)}\0".encode())
    h.update(Path(__file__).read_bytes())  # this build
    for f in [*musl_sources(musl), *sorted(port_dir.glob("*.h"))]:
        h.update(f.name.encode() + b"\0" + f.read_bytes())
    for f in sorted((musl / "include").rglob("*")) + sorted((musl / "arch").rglob("*.h*")):
        if f.is_file():
            h.update(f.relative_to(musl).as_posix().encode() + b"\0" + f.read_bytes())
    return h.hexdigest()[:20]


def build_libc(
    musl: Path,
    port_dir: Path,
    cache_root: Path,
    *,
    cc: Sequence[str] = ("gcc",),
    jobs: int | None = None,
) -> Path:
    """Build libc.a and the headers from the musl tree ``musl`` into
    ``cache_root/musl-VERSION-KEY`` (``include/``, ``lib/libc.a``) and
    return that directory; an existing build with the same key is reused.

    ``port_dir`` holds the guest's ``syscall_arch.h``. The build happens in
    a temporary directory beside the result and is renamed into place, so a
    result that exists is always complete."""
    musl = Path(musl)
    port_dir = Path(port_dir)
    check_tree(musl)
    if not (port_dir / "syscall_arch.h").is_file():
        raise LibcBuildError(f"syscall_arch.h not found in {port_dir}")
    key = cache_key(musl, port_dir, cc)
    dest = Path(cache_root) / f"musl-{MUSL_VERSION}-{key}"
    stamp = dest / "BUILD-KEY"
    if stamp.is_file() and stamp.read_text().strip() == key:
        return dest

    dest.parent.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix=".libc-build-", dir=dest.parent))
    try:
        include = work / "out" / "include"
        install_headers(musl, include)
        generated = work / "gen"
        for rel, text in _generated_headers(musl).items():
            (generated / rel).parent.mkdir(parents=True, exist_ok=True)
            (generated / rel).write_text(text)
        includes = [
            port_dir,
            musl / "arch/x86_64",
            musl / "arch/generic",
            musl / "src/include",
            musl / "src/internal",
            generated,
            musl / "include",
        ]
        base = [*cc, *LIBC_CFLAGS]
        for inc in includes:
            base += ["-I", os.fspath(inc)]
        objdir = work / "obj"
        sources = musl_sources(musl)

        def compile_one(src: Path) -> tuple[Path, str | None]:
            rel = src.relative_to(musl).with_suffix("")
            obj = objdir / (rel.as_posix().replace("/", "__") + ".o")
            proc = subprocess.run(
                [*base, "-c", os.fspath(src), "-o", os.fspath(obj)],
                capture_output=True,
                text=True,
                check=False,
            )
            return obj, (proc.stderr.strip() or "failed") if proc.returncode else None

        objdir.mkdir()
        with ThreadPoolExecutor(max_workers=jobs or os.cpu_count() or 1) as pool:
            results = list(pool.map(compile_one, sources))
        failures = [(o, e) for o, e in results if e is not None]
        if failures:
            obj, err = failures[0]
            raise LibcBuildError(
                f"building musl failed for {len(failures)} file(s); the first, {obj.stem}:\n{err}"
            )
        lib = work / "out" / "lib"
        lib.mkdir(parents=True)
        objects = [os.fspath(o) for o, _ in results]
        # ar's command line can get long: add the objects in batches.
        for i in range(0, len(objects), 200):
            subprocess.run(["ar", "rcD", os.fspath(lib / "libc.a"), *objects[i : i + 200]], check=True)
        subprocess.run(["ranlib", "-D", os.fspath(lib / "libc.a")], check=True)
        # As musl installs them: libc.a holds libm, libpthread and the rest,
        # and these empty archives let `-lm`, `-lpthread`, ... resolve to it
        # instead of to the host's (glibc's) libraries.
        for name in EMPTY_LIBS:
            subprocess.run(["ar", "rcD", os.fspath(lib / f"lib{name}.a")], check=True)
        if (musl / "COPYRIGHT").is_file():  # musl's licence travels with the library
            shutil.copyfile(musl / "COPYRIGHT", work / "out" / "COPYRIGHT")
        (work / "out" / "BUILD-KEY").write_text(key + "\n")
        try:
            os.replace(work / "out", dest)
        except OSError:
            # Another build of the same key won the race: keep it.
            if not (stamp.is_file() and stamp.read_text().strip() == key):
                raise
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return dest
