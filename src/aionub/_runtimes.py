"""Building the script runtime guests (``js.elf``, ``lua.elf``): our C in
``native/guest/scripts/`` compiled with QuickJS's or Lua's pinned sources
(``_sources``), at install time by ``setup.py``.

Builds are cached in ``<cache>/runtimes/<name>-<key>.elf``; the key covers
every input (our sources, the third-party sources, the flags, the SDK's
files and the compiler), so reinstalling with nothing changed copies the
cached ELF instead of compiling again.

Like ``_build.py`` and ``_sources.py``, this module imports only the
standard library and its siblings by file path: ``setup.py`` loads it before
the package exists, and passes the modules in.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Any

__all__ = ["Runtime", "RUNTIMES", "runtime_inputs", "build_runtime"]


@dataclass(frozen=True)
class Runtime:
    name: str  # the guest is <name>.elf
    source: str  # the _sources name
    driver: str  # our C file in native/guest/scripts/

    def units(self, root: Path) -> list[Path]:
        if self.source == "quickjs":
            return [root / f"{u}.c" for u in ("quickjs", "libregexp", "libunicode", "cutils", "libbf")]
        # Lua's core and standard library: every .c but the two programs, the
        # single-file build (onelua.c includes the others) and the test harness.
        return sorted(p for p in root.glob("*.c") if p.name not in {"lua.c", "luac.c", "onelua.c", "ltests.c"})

    def cflags(self, root: Path) -> list[str]:
        if self.source == "quickjs":
            version = (root / "VERSION").read_text().strip()
            return ["-D_GNU_SOURCE", f'-DCONFIG_VERSION="{version}"', "-DCONFIG_BIGNUM"]
        return []


RUNTIMES: dict[str, Runtime] = {
    "js": Runtime("js", "quickjs", "js.c"),
    "lua": Runtime("lua", "lua54", "lua.c"),
}


def runtime_inputs(runtime: Runtime, scripts_dir: Path, root: Path) -> tuple[list[Path], list[str]]:
    """The C sources and cflags of ``runtime``, QuickJS or Lua being at ``root``."""
    return [scripts_dir / runtime.driver, *runtime.units(root)], runtime.cflags(root)


def _key(sources: list[Path], extra: list[Path], cflags: list[str], sdk_files: dict[str, Path], cc: list[str]) -> str:
    h = hashlib.sha256()
    proc = subprocess.run([*cc, "--version"], capture_output=True, text=True, check=False)
    for part in [*cflags, " ".join(cc), proc.stdout.split("\n", 1)[0]]:
        h.update(part.encode() + b"\0")
    for src in [*sources, *extra]:
        h.update(src.name.encode() + b"\0" + src.read_bytes())
    for rel, path in sorted(sdk_files.items()):
        h.update(rel.encode() + b"\0" + path.read_bytes())
    return h.hexdigest()[:16]


def build_runtime(
    runtime: Runtime,
    output: Path,
    *,
    scripts_dir: Path,
    build: Any,
    sources: Any,
    sdk: Any,
) -> bool:
    """Build ``runtime`` into ``output`` (from the cache when possible).
    ``build`` and ``sources`` are the ``_build`` and ``_sources`` modules,
    ``sdk`` an ``SdkLayout``. Returns True if it compiled, False if cached."""
    root = sources.fetch(runtime.source)
    srcs, cflags = runtime_inputs(runtime, scripts_dir, root)
    headers = sorted(scripts_dir.glob("*.h")) + sorted(root.glob("*.h"))
    cc = build.find_compiler()
    key = _key(srcs, headers, cflags, sdk.files(), cc)
    cached = sources.cache_dir() / "runtimes" / f"{runtime.name}-{key}.elf"
    compiled = False
    if not cached.is_file():
        build.build_guest(srcs, cached, cflags=cflags, include_dirs=[root, scripts_dir], sdk=sdk)
        compiled = True
    output.parent.mkdir(parents=True, exist_ok=True)
    tmp = output.with_name(output.name + ".tmp")
    shutil.copyfile(cached, tmp)
    os.replace(tmp, output)
    return compiled
