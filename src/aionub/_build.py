"""Compiling guests: the one place that knows the guest SDK's flags and layout.

This module imports only the standard library: ``setup.py`` loads it by file
path to build the demo guest before the package itself exists.

An SDK is four things (see :class:`SdkLayout`): include directories, the
runtime sources (``*.c`` and ``*.S``, compiled into every guest), the
linker script, and the C library (musl, built by ``_libc.py``: its headers
and ``libc.a``). In the source tree the first three are
``native/guest/include`` plus ``native/include``, ``native/guest/runtime``
and ``native/guest/guest.ld``, and the libc is a build in the cache; in an
installed package all four are copied under ``aionub/_sdk/``.
"""

from __future__ import annotations

import os
import shlex
import shutil
import subprocess
import tempfile
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Union

__all__ = [
    "BuildError",
    "SdkLayout",
    "GUEST_CFLAGS",
    "GUEST_LDFLAGS",
    "build_guest",
    "install_sdk",
    "find_compiler",
]

StrPath = Union[str, "os.PathLike[str]"]

#: Flags for every guest translation unit (user code and runtime alike).
GUEST_CFLAGS: tuple[str, ...] = (
    "-std=gnu11",
    "-O2",
    "-Wall",
    "-Werror=implicit-function-declaration",  # a missing header is an error, not a guess
    "-nostdinc",  # musl's headers, the SDK's and the compiler's own (added below)
    "-fno-pic",
    "-fno-pie",
    "-fstack-protector-strong",  # musl sets the canary up from the host's random bytes
    "-fstack-clash-protection",  # big frames probe each page: overflow hits the guard
    "-fcf-protection=none",
    "-fno-math-errno",  # musl's libm reports errors by exceptions only (math_errhandling)
    "-fno-asynchronous-unwind-tables",
    "-fno-unwind-tables",
    "-ffunction-sections",
    "-fdata-sections",
)

#: Flags for the final link (passed through the compiler driver).
GUEST_LDFLAGS: tuple[str, ...] = (
    "-static",
    "-no-pie",
    "-nostdlib",
    "-Wl,--build-id=none",
    "-Wl,--gc-sections",
    "-Wl,-z,noexecstack",
    "-Wl,-z,max-page-size=4096",
    "-Wl,-z,norelro",
    "-Wl,--no-undefined",
)


class BuildError(Exception):
    """The guest could not be compiled or linked.

    ``returncode`` and ``stderr`` are the compiler's (``None`` / ``""`` when no
    compiler could be run at all); ``command`` is the argument list.
    """

    def __init__(
        self,
        message: str,
        *,
        command: Sequence[str] = (),
        returncode: int | None = None,
        stderr: str = "",
    ) -> None:
        super().__init__(message)
        self.command = list(command)
        self.returncode = returncode
        self.stderr = stderr


@dataclass(frozen=True)
class SdkLayout:
    """Where the guest SDK's files are."""

    include_dirs: tuple[Path, ...]
    runtime_dir: Path
    linker_script: Path
    #: The guest C library: ``include/`` and ``lib/libc.a``.
    libc_dir: Path

    @classmethod
    def installed(cls, sdk_dir: StrPath | None = None) -> SdkLayout:
        """The layout inside an installed package: ``aionub/_sdk/``."""
        root = Path(sdk_dir) if sdk_dir is not None else Path(__file__).resolve().parent / "_sdk"
        return cls((root / "include",), root / "runtime", root / "guest.ld", root / "libc")

    @classmethod
    def source_tree(cls, repo_root: StrPath, libc_dir: StrPath) -> SdkLayout:
        """The layout in a checkout of the repository, with the libc built
        in ``libc_dir`` (``_libc.build_libc``)."""
        root = Path(repo_root)
        return cls(
            (root / "native" / "guest" / "include", root / "native" / "include"),
            root / "native" / "guest" / "runtime",
            root / "native" / "guest" / "guest.ld",
            Path(libc_dir),
        )

    @property
    def libc_archive(self) -> Path:
        return self.libc_dir / "lib" / "libc.a"

    @property
    def libc_include(self) -> Path:
        return self.libc_dir / "include"

    def runtime_sources(self) -> list[Path]:
        """The runtime's translation units, in a stable order."""
        if not self.runtime_dir.is_dir():
            raise FileNotFoundError(f"guest SDK runtime directory not found: {self.runtime_dir}")
        return sorted(
            p for p in self.runtime_dir.iterdir() if p.suffix in (".c", ".S") and p.is_file()
        )

    def files(self) -> dict[str, Path]:
        """Every SDK file, keyed by its path relative to an installed ``_sdk/``:
        the headers of the first include directory, ``aionub/abi.h`` from
        whichever include directory has it (in the source tree,
        ``native/include`` also holds host-only headers, which are left out),
        the runtime sources and the linker script."""
        out: dict[str, Path] = {}
        if self.include_dirs:
            first = self.include_dirs[0]
            for p in sorted(first.rglob("*.h")):
                out[f"include/{p.relative_to(first).as_posix()}"] = p
        for inc in self.include_dirs:
            abi = inc / "aionub" / "abi.h"
            if abi.is_file():
                out.setdefault("include/aionub/abi.h", abi)
                break
        for p in sorted(self.runtime_dir.iterdir()):
            if p.is_file() and p.suffix in (".c", ".S", ".h"):
                out[f"runtime/{p.name}"] = p
        out["guest.ld"] = self.linker_script
        for p in sorted(self.libc_include.rglob("*.h")):
            out[f"libc/include/{p.relative_to(self.libc_include).as_posix()}"] = p
        for p in sorted((self.libc_dir / "lib").glob("lib*.a")):
            out[f"libc/lib/{p.name}"] = p
        for name in ("COPYRIGHT", "BUILD-KEY"):
            if (self.libc_dir / name).is_file():
                out[f"libc/{name}"] = self.libc_dir / name
        return out

    def check(self) -> None:
        """Raise FileNotFoundError unless the layout looks complete."""
        for inc in self.include_dirs:
            if not inc.is_dir():
                raise FileNotFoundError(f"guest SDK include directory not found: {inc}")
        if not any((inc / "aionub_guest.h").is_file() for inc in self.include_dirs):
            raise FileNotFoundError(
                "aionub_guest.h not found in the guest SDK include directories: "
                + ", ".join(map(str, self.include_dirs))
            )
        if not self.linker_script.is_file():
            raise FileNotFoundError(f"guest SDK linker script not found: {self.linker_script}")
        if not self.libc_archive.is_file() or not (self.libc_include / "stdio.h").is_file():
            raise FileNotFoundError(f"guest C library (musl) not found in {self.libc_dir}")
        if not self.runtime_sources():
            raise FileNotFoundError(f"no runtime sources in {self.runtime_dir}")


def install_sdk(source: SdkLayout, dest_dir: StrPath) -> SdkLayout:
    """Copy the SDK described by ``source`` into ``dest_dir`` (the installed
    layout, e.g. ``build/lib/aionub/_sdk``) and return the new layout."""
    source.check()
    dest = Path(dest_dir)
    for rel, src in source.files().items():
        target = dest / rel
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(src, target)
    return SdkLayout.installed(dest)


def find_compiler(cc: StrPath | Sequence[str] | None = None) -> list[str]:
    """The compiler command: ``cc`` if given, else ``$CC``, else ``cc`` or ``gcc``
    from PATH. A string may carry arguments (``"ccache gcc"``)."""
    if cc is None:
        env = os.environ.get("CC", "").strip()
        if env:
            cmd = shlex.split(env)
        else:
            for name in ("cc", "gcc"):
                found = shutil.which(name)
                if found:
                    return [found]
            raise BuildError(
                "no C compiler found: install gcc (or clang) or set CC to a compiler for x86-64"
            )
    elif isinstance(cc, (str, os.PathLike)):
        cmd = shlex.split(os.fspath(cc)) if isinstance(cc, str) else [os.fspath(cc)]
    else:
        cmd = [os.fspath(c) for c in cc]
    if not cmd:
        raise BuildError("empty compiler command")
    exe = shutil.which(cmd[0])
    if exe is None:
        raise BuildError(f"C compiler not found: {cmd[0]!r}")
    return [exe, *cmd[1:]]


def _compiler_include_dir(cc: list[str]) -> Path | None:
    """The compiler's own header directory (stddef.h, stdint.h, stdarg.h, ...),
    which ``-nostdinc`` removes along with the host's libc headers."""
    try:
        proc = subprocess.run(
            [*cc, "-print-file-name=include"],
            capture_output=True,
            text=True,
            check=False,
        )
    except OSError:
        return None
    path = Path(proc.stdout.strip())
    if proc.returncode == 0 and path.is_absolute() and (path / "stddef.h").is_file():
        return path
    return None


def _as_sources(sources: StrPath | Iterable[StrPath]) -> list[Path]:
    if isinstance(sources, (str, os.PathLike)):
        items = [sources]
    else:
        items = list(sources)
    if not items:
        raise ValueError("build_guest: no source files given")
    paths = [Path(s) for s in items]
    for p in paths:
        if not p.is_file():
            raise FileNotFoundError(f"guest source file not found: {p}")
    return paths


def build_guest(
    sources: StrPath | Iterable[StrPath],
    output: StrPath,
    *,
    cc: StrPath | Sequence[str] | None = None,
    cflags: Iterable[str] = (),
    include_dirs: Iterable[StrPath] = (),
    sdk: SdkLayout | None = None,
    sdk_dir: StrPath | None = None,
) -> Path:
    """Compile C guest sources with the SDK into a static guest ELF at ``output``.

    ``sources`` is one path or several. ``cflags`` come after the SDK's flags
    (so ``-O3`` or ``-DNAME`` work); ``include_dirs`` are searched before the
    SDK's headers. The SDK is ``sdk`` if given, else the installed layout under
    ``sdk_dir`` (default: ``_sdk`` next to this file). The output is written
    atomically (built in a temporary file beside it, then renamed); its parent
    directories are created. Returns the output path.

    Raises ValueError for no sources, FileNotFoundError for a missing source or
    SDK file, and BuildError when no compiler is found or it fails (the message
    includes the compiler's stderr).
    """
    srcs = _as_sources(sources)
    if sdk is not None and sdk_dir is not None:
        raise ValueError("build_guest: pass sdk or sdk_dir, not both")
    layout = sdk if sdk is not None else SdkLayout.installed(sdk_dir)
    layout.check()
    compiler = find_compiler(cc)

    includes = [Path(d) for d in include_dirs] + list(layout.include_dirs) + [layout.libc_include]
    cmd = [*compiler, *GUEST_CFLAGS]
    cc_include = _compiler_include_dir(compiler)
    if cc_include is None:
        raise BuildError(
            f"cannot find the C compiler's own headers (stddef.h): "
            f"`{shlex.join([*compiler, '-print-file-name=include'])}` did not name a "
            f"directory that has them; use gcc or clang"
        )
    for inc in includes:
        cmd += ["-I", os.fspath(inc)]
    cmd += ["-isystem", os.fspath(cc_include)]
    cmd += list(cflags)

    out = Path(output)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp_dir = tempfile.mkdtemp(prefix=".aionub-build-", dir=out.parent)
    try:
        tmp_out = Path(tmp_dir) / out.name
        cmd += [os.fspath(p) for p in srcs + layout.runtime_sources()]
        cmd += ["-o", os.fspath(tmp_out), *GUEST_LDFLAGS, "-T", os.fspath(layout.linker_script)]
        # musl, and the compiler's support routines (128-bit division and the
        # like), which musl itself also needs.
        # -L first: a user's `-lm` or `-lpthread` finds musl's (empty) archives
        # there, never the host's glibc ones.
        cmd += ["-L", os.fspath(layout.libc_archive.parent)]
        cmd += ["-Wl,--start-group", os.fspath(layout.libc_archive), "-lgcc", "-Wl,--end-group"]
        try:
            proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
        except OSError as exc:
            raise BuildError(
                f"could not run the C compiler {compiler[0]!r}: {exc}", command=cmd
            ) from exc
        if proc.returncode != 0:
            # The compiler's diagnostics first; the (long) command after them.
            raise BuildError(
                f"guest build failed (exit status {proc.returncode}):\n"
                f"{proc.stderr.strip()}\n\ncommand: {shlex.join(cmd)}",
                command=cmd,
                returncode=proc.returncode,
                stderr=proc.stderr,
            )
        os.replace(tmp_out, out)
    finally:
        shutil.rmtree(tmp_dir, ignore_errors=True)
    return out
