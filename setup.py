"""Build steps beyond pyproject.toml: the cffi extension (out-of-line API
mode), and copying the guest SDK into the package plus compiling the bundled
demo guest with it, so ``aionub.DEMO_GUEST`` and ``aionub.build_guest`` work
from the installed package alone."""

from __future__ import annotations

import importlib.util
import pathlib
import shutil
import sys

from setuptools import setup
from setuptools.command.build_py import build_py

ROOT = pathlib.Path(__file__).resolve().parent


def _load_build_module():
    """src/aionub/_build.py, loaded by path: the package is not built yet."""
    spec = importlib.util.spec_from_file_location("_aionub_build", ROOT / "src" / "aionub" / "_build.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


class BuildPyWithGuests(build_py):
    def run(self) -> None:
        super().run()
        package = pathlib.Path(self.build_lib) / "aionub"
        build = _load_build_module()
        sdk_dir = package / "_sdk"
        if sdk_dir.exists():
            shutil.rmtree(sdk_dir)
        sdk = build.install_sdk(build.SdkLayout.source_tree(ROOT), sdk_dir)
        build.build_guest(
            [ROOT / "native" / "guest" / "demo" / "demo.c"],
            package / "_guests" / "demo.elf",
            sdk=sdk,
        )


setup(
    cffi_modules=["native/build_ffi.py:ffibuilder"],
    cmdclass={"build_py": BuildPyWithGuests},
)
