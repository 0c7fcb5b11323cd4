"""Bad input from Python callers gets a clear exception naming what was
wrong; bad guest images are InvalidGuest."""

from __future__ import annotations

import os
import struct
import subprocess
import sys
from pathlib import Path

import pytest

import aionub

pytestmark = pytest.mark.anyio


async def test_unknown_function(demo: aionub.Sandbox) -> None:
    with pytest.raises(aionub.GuestFunctionNotFound, match="'nope'"):
        await demo.call("nope")
    assert not demo.poisoned


@pytest.mark.parametrize(
    ("name", "args", "message"),
    [
        ("add", (1,), r"add\(\) takes 2 arguments \(1 given\)"),
        ("add", (1, 2, 3), r"add\(\) takes 2 arguments \(3 given\)"),
        ("noop", (1,), r"noop\(\) takes 0 arguments \(1 given\)"),
        ("add", (1, "2"), r"add\(\) argument 2 must be int, not str"),
        ("add", (True, 2), r"add\(\) argument 1 must be int, not bool"),
        ("mul", (1.0, "x"), r"mul\(\) argument 2 must be float, not str"),
        ("echo", ("text",), r"echo\(\) argument 1 must be bytes, not str"),
        ("upper", (b"x",), r"upper\(\) argument 1 must be str, not bytes"),
        ("fib", (None,), r"fib\(\) argument 1 must be int, not NoneType"),
    ],
)
async def test_wrong_arguments_raise_type_error(
    demo: aionub.Sandbox, name: str, args: tuple[object, ...], message: str
) -> None:
    with pytest.raises(TypeError, match=message):
        await demo.call(name, *args)
    assert not demo.poisoned
    assert await demo.call("add", 1, 1) == 2


async def test_int_out_of_range(demo: aionub.Sandbox) -> None:
    with pytest.raises(OverflowError, match="64-bit"):
        await demo.call("add", 2**63, 1)


async def test_unencodable_string(demo: aionub.Sandbox) -> None:
    with pytest.raises(ValueError, match="argument 1"):
        await demo.call("upper", "\ud800")


async def test_arguments_larger_than_input_buffer(demo: aionub.Sandbox) -> None:
    with pytest.raises(ValueError, match="input_size"):
        await demo.call("echo", b"x" * (64 * 1024))
    assert not demo.poisoned


async def test_function_name_must_be_str(demo: aionub.Sandbox) -> None:
    with pytest.raises(TypeError, match="function name must be a str"):
        await demo.call(b"noop")  # type: ignore[arg-type]


@pytest.mark.parametrize("timeout", [-1, float("nan")])
async def test_bad_timeout_value(demo: aionub.Sandbox, timeout: float) -> None:
    with pytest.raises(ValueError, match="timeout"):
        await demo.call("noop", timeout=timeout)


async def test_bad_timeout_type(demo: aionub.Sandbox) -> None:
    with pytest.raises(TypeError, match="timeout"):
        await demo.call("noop", timeout="1")  # type: ignore[arg-type]


async def test_closed_sandbox() -> None:
    sb = await aionub.Sandbox.create(aionub.DEMO_GUEST)
    await sb.aclose()
    await sb.aclose()  # idempotent
    with pytest.raises(aionub.SandboxClosed):
        await sb.call("noop")
    with pytest.raises(aionub.SandboxClosed):
        sb.interrupt_handle()
    assert "closed" in repr(sb)


@pytest.mark.parametrize(
    ("options", "error", "message"),
    [
        ({"memory_size": 3 * 1024 * 1024 + 1}, ValueError, "memory_size must be a multiple of 4096"),
        ({"memory_size": 1 << 40}, ValueError, "memory_size must be between"),
        ({"memory_size": "big"}, TypeError, "memory_size must be an int"),
        ({"stack_size": 0}, ValueError, "stack_size must be positive"),
        ({"sig_rt_min_offset": 40}, ValueError, "sig_rt_min_offset"),
        ({"interrupt_retry_delay": 0}, ValueError, "interrupt_retry_delay"),
        ({"no_such_option": 1}, TypeError, "unknown sandbox option 'no_such_option'"),
        (
            {"memory_size": 2 * 1024 * 1024, "input_size": 1024 * 1024, "output_size": 1024 * 1024},
            ValueError,
            "too small",
        ),
    ],
)
async def test_bad_config(options: dict[str, object], error: type[Exception], message: str) -> None:
    with pytest.raises(error, match=message):
        await aionub.Sandbox.create(aionub.DEMO_GUEST, **options)


async def test_bad_host_functions() -> None:
    with pytest.raises(TypeError, match="not callable"):
        await aionub.Sandbox.create(aionub.DEMO_GUEST, host_functions={"f": 1})
    with pytest.raises(TypeError, match="mapping"):
        await aionub.Sandbox.create(aionub.DEMO_GUEST, host_functions=[print])  # type: ignore[arg-type]


async def test_bad_guest_argument_type() -> None:
    with pytest.raises(TypeError, match="guest must be a path or the bytes"):
        await aionub.Sandbox.create(42)  # type: ignore[arg-type]


async def test_missing_guest_file(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError):
        await aionub.Sandbox.create(tmp_path / "missing.elf")


# ---- invalid guest images -----------------------------------------------------

def demo_bytes() -> bytes:
    return Path(aionub.DEMO_GUEST).read_bytes()


def patch_first_load(image: bytes, **fields: int) -> bytes:
    """Rewrite fields of the first PT_LOAD program header."""
    data = bytearray(image)
    phoff, = struct.unpack_from("<Q", data, 0x20)
    phentsize, phnum = struct.unpack_from("<HH", data, 0x36)
    names = ("p_type", "p_flags", "p_offset", "p_vaddr", "p_paddr", "p_filesz", "p_memsz", "p_align")
    for i in range(phnum):
        off = phoff + i * phentsize
        values = list(struct.unpack_from("<IIQQQQQQ", data, off))
        if values[0] == 1:
            for key, value in fields.items():
                values[names.index(key)] = value
            struct.pack_into("<IIQQQQQQ", data, off, *values)
            return bytes(data)
    raise AssertionError("no PT_LOAD")


@pytest.mark.parametrize(
    ("make", "message"),
    [
        (lambda: b"", "empty"),
        (lambda: b"#!/bin/sh\necho not an elf\n" * 4, "not an ELF file"),
        (lambda: demo_bytes()[:40], "truncated"),
        (lambda: demo_bytes()[:200], "outside the"),
        (lambda: demo_bytes()[:0x1100], "outside the"),
        (lambda: patch_first_load(demo_bytes(), p_vaddr=0x1000), "outside guest image memory"),
        (lambda: patch_first_load(demo_bytes(), p_vaddr=0x7FF000), "outside guest image memory"),
        (lambda: patch_first_load(demo_bytes(), p_memsz=1 << 62), "outside guest image memory"),
        (lambda: patch_first_load(demo_bytes(), p_offset=1 << 40), "outside the"),
        (lambda: patch_first_load(demo_bytes(), p_flags=7), "writable and executable"),
        (lambda: demo_bytes()[:16] + struct.pack("<H", 3) + demo_bytes()[18:], "not a static executable"),
        (lambda: demo_bytes()[:4] + b"\x01" + demo_bytes()[5:], "64-bit"),
    ],
    ids=["empty", "not-elf", "header-only", "truncated-phdrs", "truncated-segment", "below-image-base",
         "past-memory", "huge-memsz", "offset-past-file", "w-and-x", "shared-object", "32-bit"],
)
async def test_invalid_guest_images(make: object, message: str) -> None:
    image = make()  # type: ignore[operator]
    with pytest.raises(aionub.InvalidGuest, match=message):
        await aionub.Sandbox.create(image)


async def test_invalid_guest_from_file(tmp_path: Path) -> None:
    path = tmp_path / "bad.elf"
    path.write_bytes(b"\x7fELF garbage")
    with pytest.raises(aionub.InvalidGuest):
        await aionub.Sandbox.create(path)
    with pytest.raises(aionub.InvalidGuest, match="directory"):
        await aionub.Sandbox.create(tmp_path)


@pytest.mark.no_kvm
def test_missing_kvm_device_gives_kvm_unavailable() -> None:
    code = (
        "import asyncio, aionub\n"
        "try:\n"
        "    asyncio.run(aionub.Sandbox.create(aionub.DEMO_GUEST))\n"
        "except aionub.KvmUnavailable as e:\n"
        "    print('KvmUnavailable:', e)\n"
    )
    env = dict(os.environ, AIONUB_KVM_DEVICE="/nonexistent/kvm")
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert "KvmUnavailable: cannot open /nonexistent/kvm: No such file or directory" in out.stdout


# ---- what errors call a guest ------------------------------------------------------------


async def test_a_guest_from_bytes_is_named_by_its_hash() -> None:
    import hashlib

    image = Path(aionub.DEMO_GUEST).read_bytes()
    short = hashlib.sha256(image).hexdigest()[:12]
    async with aionub.Sandbox.create(image) as sb:
        assert f"bytes:{short}" in repr(sb)
        with pytest.raises(aionub.GuestFunctionNotFound, match=f"guest bytes:{short} exports no function"):
            await sb.call("nosuch")


async def test_name_names_the_guest_in_errors_and_in_pools() -> None:
    image = Path(aionub.DEMO_GUEST).read_bytes()
    async with aionub.Sandbox.create(image, name="tenant-42 pricing") as sb:
        with pytest.raises(aionub.GuestFunctionNotFound, match="guest tenant-42 pricing exports no"):
            await sb.call("nosuch")
    async with aionub.SandboxPool(image, size=1, name="tenant-7") as pool:
        assert "tenant-7" in repr(pool)
        async with pool.acquire() as sb:
            assert "tenant-7" in repr(sb)
            with pytest.raises(aionub.GuestFunctionNotFound, match="guest tenant-7 exports no"):
                await sb.call("nosuch")


@pytest.mark.parametrize(
    ("name", "error"), [(3, TypeError), ("", ValueError), ("a\nb", ValueError), ("x" * 201, ValueError)]
)
async def test_a_bad_name_is_refused(name: object, error: type[Exception]) -> None:
    with pytest.raises(error, match="name must be"):
        aionub.Sandbox.create(aionub.DEMO_GUEST, name=name)  # type: ignore[arg-type]
    with pytest.raises(error, match="name must be"):
        aionub.SandboxPool(aionub.DEMO_GUEST, name=name)  # type: ignore[arg-type]
