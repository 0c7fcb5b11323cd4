"""Build steps beyond pyproject.toml: the cffi extension (out-of-line API
mode), and the guest SDK: musl fetched (pinned, hash-checked) and built for
guests once per cache, copied into the package with the SDK's headers,
runtime and linker script, and the bundled demo guest compiled with it, so
``aionub.DEMO_GUEST`` and ``aionub.build_guest`` work from the installed
package alone."""

from __future__ import annotations

import importlib.util
import pathlib
import shutil
import sys

from setuptools import setup
from setuptools.command.build_py import build_py

ROOT = pathlib.Path(__file__).resolve().parent


def _load(name: str):
    """src/aionub/<name>.py, loaded by path: the package is not built yet."""
    spec = importlib.util.spec_from_file_location(f"_aionub{name}", ROOT / "src" / "aionub" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


def _split_debug_info(elf: pathlib.Path) -> None:
    """Move the DWARF of ``elf`` into ``elf.debug`` beside it, linked with
    .gnu_debuglink: gdb finds it there (docs/debugging.md) and the guest
    image every Sandbox.create reads and hashes stays small. Without
    objcopy the DWARF simply stays in the image."""
    objcopy = shutil.which("objcopy")
    if objcopy is None:
        return
    import subprocess

    debug = elf.with_name(elf.name + ".debug")
    subprocess.run([objcopy, "--only-keep-debug", str(elf), str(debug)], check=True)
    subprocess.run([objcopy, "--strip-debug", f"--add-gnu-debuglink={debug}", str(elf)], check=True)


class BuildPyWithGuests(build_py):
    def run(self) -> None:
        super().run()
        package = pathlib.Path(self.build_lib) / "aionub"
        build, libc, sources = _load("_build"), _load("_libc"), _load("_sources")
        musl = sources.fetch("musl") / "musl"
        libc_dir = libc.build_libc(
            musl, ROOT / "native" / "guest" / "libc", sources.cache_dir() / "libc",
            cc=build.find_compiler(),
        )
        sdk_dir = package / "_sdk"
        if sdk_dir.exists():
            shutil.rmtree(sdk_dir)
        sdk = build.install_sdk(build.SdkLayout.source_tree(ROOT, libc_dir), sdk_dir)
        demo = package / "_guests" / "demo.elf"
        build.build_guest([ROOT / "native" / "guest" / "demo" / "demo.c"], demo, sdk=sdk, cflags=["-g"])
        _split_debug_info(demo)
        # The script runtimes (QuickJS, Lua 5.4), cached by a key over all
        # their inputs: a reinstall with nothing changed only copies them.
        runtimes = _load("_runtimes")
        for runtime in runtimes.RUNTIMES.values():
            runtimes.build_runtime(
                runtime, package / "_guests" / f"{runtime.name}.elf",
                scripts_dir=ROOT / "native" / "guest" / "scripts", build=build, sources=sources, sdk=sdk,
            )


setup(
    cffi_modules=["native/build_ffi.py:ffibuilder"],
    cmdclass={"build_py": BuildPyWithGuests},
)
