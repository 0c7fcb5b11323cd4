"""The guest SDK without KVM: the runtime's C code compiled and tested natively,
the shape of the ELF that build_guest() produces, and build_guest()'s errors."""

from __future__ import annotations

import os
import shutil
import struct
import subprocess
from pathlib import Path

import pytest

from aionub import _build

pytestmark = pytest.mark.no_kvm

REPO = Path(__file__).resolve().parents[1]
SOURCE_SDK = _build.SdkLayout.source_tree(REPO, _build.SdkLayout.installed().libc_dir)
DEMO_SOURCE = REPO / "native" / "guest" / "demo" / "demo.c"

needs_source_tree = pytest.mark.skipif(
    not SOURCE_SDK.runtime_dir.is_dir(), reason="needs the repository's native/guest sources"
)
needs_gcc = pytest.mark.skipif(shutil.which("gcc") is None, reason="needs gcc")


def _tool(name: str) -> str:
    path = shutil.which(name)
    if path is None:
        pytest.skip(f"needs {name}")
    return path


# ---- the runtime's C code, natively ------------------------------------------------

#: The runtime's pure-C units: no system requests, no musl internals.
RUNTIME_UNITS = ("messages", "hostcall", "values", "pages")


@needs_source_tree
@needs_gcc
def test_runtime_c_code_natively(tmp_path: Path) -> None:
    """The message encoding, the host-call codec and the page allocator
    (brk/mmap/munmap/mremap/madvise against a model), compiled for the host
    against glibc's headers (tests/native/runtime_test.c)."""
    gcc = _tool("gcc")
    (tmp_path / "out.h").write_text("void ab__test_out(unsigned port, unsigned n);\n")
    sanitize = ["-fsanitize=address,undefined", "-fno-sanitize-recover=all"]
    if subprocess.run(
        [gcc, *sanitize, "-x", "c", "-", "-o", str(tmp_path / "probe")],
        input="int main(void){return 0;}",
        text=True,
        capture_output=True,
    ).returncode:
        sanitize = []  # fmt: skip
    flags = [
        "-std=gnu11", "-O1", "-g", "-Wall", "-Wextra", "-Werror", "-fno-builtin", *sanitize,
        # what internal.h's AB__OUT would do with an `out` instruction
        "-include", str(tmp_path / "out.h"), "-DAB__OUT(p,n)=ab__test_out((p),(unsigned)(n))",
        f"-I{SOURCE_SDK.runtime_dir}", *[f"-I{d}" for d in SOURCE_SDK.include_dirs],
    ]  # fmt: skip
    objects = []
    for unit in RUNTIME_UNITS:
        objects.append(str(tmp_path / f"{unit}.o"))
        # malloc and free renamed: the test can make allocations fail and count what is live
        subprocess.run([gcc, *flags, "-Dmalloc=ab__test_malloc", "-Dfree=ab__test_free", "-c",
                        str(SOURCE_SDK.runtime_dir / f"{unit}.c"), "-o", objects[-1]], check=True)  # fmt: skip
    exe = tmp_path / "runtime_test"
    test_source = REPO / "tests" / "native" / "runtime_test.c"
    subprocess.run([gcc, *flags, str(test_source), *objects, "-o", str(exe)], check=True)
    proc = subprocess.run([str(exe)], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-4000:]
    assert proc.stdout.strip().endswith(" 0 failures"), proc.stdout[-4000:]
    checks = int(proc.stdout.strip().splitlines()[-1].split()[0])
    assert checks > 200, proc.stdout[-2000:]


# ---- the ELF that build_guest() makes ----------------------------------------------

PT_LOAD, PT_TLS, PT_GNU_STACK = 1, 7, 0x6474E551
PF_X, PF_W, PF_R = 1, 2, 4


def _program_headers(path: Path) -> tuple[int, int, list[tuple[int, ...]]]:
    data = path.read_bytes()
    assert data[:4] == b"\x7fELF" and data[4] == 2 and data[5] == 1  # ELF64, little endian
    e_type, e_machine, _, e_entry, e_phoff = struct.unpack_from("<HHIQQ", data, 16)
    e_phentsize, e_phnum = struct.unpack_from("<HH", data, 54)
    assert e_machine == 62  # x86-64
    phdrs = [struct.unpack_from("<IIQQQQQQ", data, e_phoff + i * e_phentsize) for i in range(e_phnum)]
    return e_type, e_entry, phdrs


@pytest.fixture(scope="module")
def demo_elf(tmp_path_factory: pytest.TempPathFactory) -> Path:
    if not SOURCE_SDK.runtime_dir.is_dir():
        pytest.skip("needs the repository's native/guest sources")
    try:
        _build.find_compiler()
    except _build.BuildError as exc:
        pytest.skip(str(exc))
    return _build.build_guest(DEMO_SOURCE, tmp_path_factory.mktemp("demo") / "demo.elf", sdk=SOURCE_SDK)


def test_demo_is_a_static_executable_at_the_image_base(demo_elf: Path) -> None:
    e_type, entry, phdrs = _program_headers(demo_elf)
    assert e_type == 2  # ET_EXEC
    loads = [p for p in phdrs if p[0] == PT_LOAD]
    assert entry >= 0x100000
    assert any(p[3] <= entry < p[3] + p[6] and p[1] & PF_X for p in loads)
    assert all(p[0] in (PT_LOAD, PT_GNU_STACK, PT_TLS) for p in phdrs)  # no INTERP, DYNAMIC
    # The first segment loads the ELF and program headers (musl reads them
    # through AT_PHDR to find the TLS segment).
    assert min(loads, key=lambda p: p[3])[2] == 0 and min(p[3] for p in loads) == 0x100000


def test_demo_segments_have_one_permission_per_page(demo_elf: Path) -> None:
    _, _, phdrs = _program_headers(demo_elf)
    loads = sorted((p for p in phdrs if p[0] == PT_LOAD), key=lambda p: p[3])
    flags = [p[1] for p in loads]
    assert flags[0] == PF_R | PF_X  # code
    assert PF_R in flags  # read-only data
    assert flags[-1] == PF_R | PF_W  # data and bss
    assert not any(f & PF_W and f & PF_X for f in flags)
    pages: dict[int, int] = {}
    for _, pflags, _, vaddr, _, _, memsz, _ in loads:
        assert vaddr % 0x1000 == 0 and vaddr >= 0x100000
        for page in range(vaddr // 0x1000, (vaddr + memsz + 0xFFF) // 0x1000):
            assert pages.setdefault(page, pflags) == pflags, f"page {page:#x} shared"
    stack = [p for p in phdrs if p[0] == PT_GNU_STACK]
    assert stack and not stack[0][1] & PF_X


def _disassemble(elf: Path, symbol: str) -> str:
    objdump = _tool("objdump")
    out = subprocess.run(
        [objdump, "-d", "--no-show-raw-insn", f"--disassemble={symbol}", str(elf)],
        capture_output=True, text=True, check=True,
    ).stdout  # fmt: skip
    return out.split(f"<{symbol}>:", 1)[1]


def test_demo_fib_and_overflow_really_recurse_and_spin_loops(demo_elf: Path) -> None:
    fib = _disassemble(demo_elf, "fib")
    assert fib.count("call") == 2 and fib.count("<fib>") >= 2, fib
    recurse = _disassemble(demo_elf, "recurse")
    assert "call" in recurse and "<recurse>" in recurse, recurse
    spin = _disassemble(demo_elf, "spin").strip().splitlines()[0]
    address = spin.split(":")[0].strip()
    assert "jmp" in spin and address in spin.split("jmp", 1)[1], spin


def test_demo_has_no_undefined_symbols(demo_elf: Path) -> None:
    nm = _tool("nm")
    out = subprocess.run([nm, "-u", str(demo_elf)], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == ""


# ---- build_guest() itself ------------------------------------------------------------


def test_build_guest_rejects_no_sources(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="no source"):
        _build.build_guest([], tmp_path / "g.elf", sdk=SOURCE_SDK)


def test_build_guest_names_a_missing_source(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match=r"nope\.c"):
        _build.build_guest(tmp_path / "nope.c", tmp_path / "g.elf", sdk=SOURCE_SDK)


def test_build_guest_reports_a_missing_compiler(tmp_path: Path) -> None:
    src = tmp_path / "g.c"
    src.write_text("")
    with pytest.raises(_build.BuildError, match="no-such-cc"):
        _build.build_guest(src, tmp_path / "g.elf", cc="no-such-cc", sdk=SOURCE_SDK)


def test_build_guest_reports_a_missing_sdk(tmp_path: Path) -> None:
    src = tmp_path / "g.c"
    src.write_text("")
    with pytest.raises(FileNotFoundError, match="SDK"):
        _build.build_guest(src, tmp_path / "g.elf", sdk_dir=tmp_path / "no-sdk")


GOOD_GUEST = """
#include <aionub_guest.h>
static int64_t twice(int64_t x) { return 2 * x; }
AB_EXPORT(twice, AB_INT, AB_INT);
"""


@needs_source_tree
@needs_gcc
@pytest.mark.parametrize(
    ("source", "message"),
    [
        ("int f(void) { return }", "error"),
        (
            "#include <aionub_guest.h>\nstatic int add(int a, int b) { return a + b; }\n"
            "AB_EXPORT(add, AB_INT, AB_INT, AB_INT);",
            "signature of add does not match",
        ),
        (
            "#include <aionub_guest.h>\nstatic void f(const uint8_t *a, size_t an, const uint8_t *b,"
            " size_t bn, const uint8_t *c, size_t cn, const uint8_t *d, size_t dn) {}\n"
            "AB_EXPORT(f, AB_VOID, AB_BYTES, AB_BYTES, AB_BYTES, AB_BYTES);",
            "at most 6 integer-class",
        ),
        (
            "#include <aionub_guest.h>\nstatic void f(int64_t x) {}\nAB_EXPORT(f, AB_VOID, AB_VOID);",
            "AB_VOID_is_only_valid_as_a_return_type",
        ),
        (
            "#include <aionub_guest.h>\nvoid no_such_function(void);\n"
            "static void f(void) { no_such_function(); }\nAB_EXPORT(f, AB_VOID);",
            "no_such_function",
        ),
    ],
    ids=["syntax", "signature", "too-many-params", "void-param", "undefined-function"],
)
def test_build_guest_reports_compiler_errors(tmp_path: Path, source: str, message: str) -> None:
    src = tmp_path / "bad.c"
    src.write_text(source)
    out = tmp_path / "out" / "bad.elf"
    with pytest.raises(_build.BuildError, match=message) as info:
        _build.build_guest(src, out, sdk=SOURCE_SDK)
    assert info.value.returncode not in (None, 0)
    assert message in info.value.stderr
    # The compiler's diagnostics come first, the long command line last.
    text = str(info.value)
    assert text.index(message) < text.index("\ncommand: ")
    assert not out.exists()
    assert os.listdir(out.parent) == []  # the temporary build directory is gone


@needs_source_tree
@needs_gcc
def test_build_guest_from_an_installed_sdk_copy(tmp_path: Path) -> None:
    layout = _build.install_sdk(SOURCE_SDK, tmp_path / "_sdk")
    assert (tmp_path / "_sdk" / "include" / "aionub" / "abi.h").is_file()
    assert not (tmp_path / "_sdk" / "include" / "aionub" / "host.h").exists()
    src = tmp_path / "good.c"
    src.write_text(GOOD_GUEST)
    out = _build.build_guest([src], tmp_path / "a" / "b" / "good.elf", sdk_dir=tmp_path / "_sdk")
    assert out == tmp_path / "a" / "b" / "good.elf"
    assert _program_headers(out)[0] == 2
    assert layout.runtime_sources() == _build.SdkLayout.installed(tmp_path / "_sdk").runtime_sources()
