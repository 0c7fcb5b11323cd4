"""Where the installed package keeps what the build put there."""

from __future__ import annotations

from pathlib import Path

_PACKAGE = Path(__file__).resolve().parent

#: The bundled demo guest, compiled at install (see setup.py).
DEMO_GUEST: Path = _PACKAGE / "_guests" / "demo.elf"

#: The script runtime guests, compiled at install (see setup.py and
#: docs/scripts.md): QuickJS and Lua 5.4 with our eval/exec/call exports.
JS_GUEST: Path = _PACKAGE / "_guests" / "js.elf"
LUA_GUEST: Path = _PACKAGE / "_guests" / "lua.elf"

#: The guest SDK copied into the package at install: headers, runtime
#: sources and linker script used by ``aionub.build_guest``.
SDK_DIR: Path = _PACKAGE / "_sdk"
