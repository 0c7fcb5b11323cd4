"""Building test guests once: `build_cached()` compiles with aionub.build_guest
into the aionub cache, keyed by everything that goes into the build (source
contents, flags, include directories, the installed SDK's files and the
compiler), so a big third-party guest is compiled once, not once per run."""

from __future__ import annotations

import hashlib
import os
import subprocess
from collections.abc import Iterable, Sequence
from pathlib import Path

from aionub import _build, _sources

__all__ = ["build_cached", "sdk_has_libc", "LIBC_MISSING"]

LIBC_MISSING = "the guest SDK has no full C library (musl) yet: these guests need <math.h>, <stdio.h> files, ..."


def _sdk_files() -> dict[str, Path]:
    return _build.SdkLayout.installed().files()


def sdk_has_libc() -> bool:
    """Whether the installed guest SDK carries a full C library (<math.h> among its headers)."""
    try:
        return any(rel.endswith("/math.h") for rel in _sdk_files())
    except OSError:  # no installed SDK at all (aionub imported from a bare source tree)
        return False


def _compiler_id() -> str:
    cc = _build.find_compiler()
    proc = subprocess.run([*cc, "--version"], capture_output=True, text=True, check=False)
    return " ".join(cc) + "\n" + proc.stdout.split("\n", 1)[0]


def build_cached(
    name: str,
    sources: Sequence[Path],
    *,
    cflags: Iterable[str] = (),
    include_dirs: Iterable[Path] = (),
) -> Path:
    """The guest ELF built from ``sources`` (see the module docstring)."""
    cflags = list(cflags)
    include_dirs = [Path(d) for d in include_dirs]
    h = hashlib.sha256()
    for part in [*cflags, *map(os.fspath, include_dirs), _compiler_id()]:
        h.update(part.encode() + b"\0")
    for src in sources:
        h.update(src.name.encode() + b"\0" + src.read_bytes())
    for rel, path in sorted(_sdk_files().items()):
        h.update(rel.encode() + b"\0" + path.read_bytes())
    out = _sources.cache_dir() / "test-guests" / f"{name}-{h.hexdigest()[:16]}.elf"
    if not out.is_file():
        _build.build_guest(sources, out, cflags=cflags, include_dirs=include_dirs)
    return out
