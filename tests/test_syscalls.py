"""System requests (AB_PORT_SYS), host side: every op with good and hostile
operands, made raw by tests/hostile/syscalls.c (the test builds each
request; the guest sends it with the length the test chooses and hands
back the reply). The fast ops are served by the C core (native/sysfast.c),
the others by Python (src/aionub/_syscalls.py)."""

from __future__ import annotations

import errno
import logging
import struct
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import anyio
import pytest
import statedump

import aionub
from aionub import _abi
from aionub._syscalls import SystemServices
from hostile import syscalls_guest

pytestmark = pytest.mark.anyio

ASYNCIO_ONLY = pytest.mark.parametrize("anyio_backend", [pytest.param(("asyncio", {}), id="asyncio")])

OUTPUT_SIZE = 64 * 1024  # the default output buffer
ROOM = OUTPUT_SIZE - _abi.SYS_REPLY_HEADER
CR4_FSGSBASE = 1 << 16
BOOT_FSGSBASE = 1


@pytest.fixture(scope="session")
def guest(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return syscalls_guest(tmp_path_factory)


def req(op: int, fmt: str = "", *operands: int) -> bytes:
    return struct.pack("<I" + fmt, op, *operands)


def string(raw: bytes) -> bytes:
    """A wire string: len:u32, bytes, NUL."""
    return struct.pack("<I", len(raw)) + raw + b"\x00"


async def sys(sb: aionub.Sandbox, request: bytes, reply: int = 8, *, length: int = -1, **kw: Any) -> bytes:
    data = await sb.call("sys_raw", request, length, reply, **kw)
    assert isinstance(data, bytes)
    return data


async def result(sb: aionub.Sandbox, request: bytes, **kw: Any) -> int:
    value: int = struct.unpack("<q", await sys(sb, request, **kw))[0]
    return value


async def protocol_error(sb: aionub.Sandbox, request: bytes, *, length: int = -1) -> str:
    with pytest.raises(aionub.GuestProtocolError) as info:
        await sys(sb, request, length=length)
    assert sb.poisoned
    return str(info.value)


# ---- CLOCK (fast) ----------------------------------------------------------------------------

CLOCKS = {0: "realtime", 1: "monotonic", 2: "process_cputime", 3: "thread_cputime", 4: "monotonic_raw",
          5: "realtime_coarse", 6: "monotonic_coarse", 7: "boottime"}


async def clock(sb: aionub.Sandbox, clock_id: int) -> tuple[int, int, int]:
    rc, sec, nsec = struct.unpack("<qqq", await sys(sb, req(_abi.SYS_CLOCK, "I", clock_id), 24))
    return rc, sec, nsec


@ASYNCIO_ONLY
async def test_clock_matches_the_host_clocks(guest: Path) -> None:
    async with aionub.Sandbox.create(guest) as sb:
        for clock_id in CLOCKS:
            rc, sec, nsec = await clock(sb, clock_id)
            assert rc == 0 and sec >= 0 and 0 <= nsec < 10**9, clock_id
        before = time.monotonic_ns()
        _, sec, nsec = await clock(sb, 1)
        after = time.monotonic_ns()
        assert before <= sec * 10**9 + nsec <= after
        _, sec, nsec = await clock(sb, 0)
        assert abs(sec * 10**9 + nsec - time.time_ns()) < 2 * 10**9
        # Monotonic across calls, and the CPU-time clocks are the vCPU
        # thread's (small), not the test process's.
        first = await clock(sb, 1)
        second = await clock(sb, 1)
        assert second[1:] >= first[1:]
        _, sec, _ = await clock(sb, 2)
        assert sec < 60
        assert not sb.poisoned


@ASYNCIO_ONLY
@pytest.mark.parametrize("clock_id", [8, 9, 10, 11, 12, 0x7FFFFFFF, 0xFFFFFFFF, -6 & 0xFFFFFFFF])
async def test_clock_ids_it_does_not_know_are_einval(guest: Path, clock_id: int) -> None:
    async with aionub.Sandbox.create(guest) as sb:
        assert (await clock(sb, clock_id))[0] == -errno.EINVAL
        assert await sb.call("add", 1, 2) == 3


# ---- RANDOM (fast) ---------------------------------------------------------------------------


@ASYNCIO_ONLY
async def test_random_bytes_differ_between_calls_and_after_restore(guest: Path) -> None:
    async with aionub.Sandbox.create(guest) as sb:
        snap = await sb.snapshot()
        a = await sys(sb, req(_abi.SYS_RANDOM, "I", 32), 40)
        b = await sys(sb, req(_abi.SYS_RANDOM, "I", 32), 40)
        assert a[:8] == b[:8] == struct.pack("<q", 32)
        assert a[8:] != b[8:]
        await sb.restore(snap)
        c = await sys(sb, req(_abi.SYS_RANDOM, "I", 32), 40)
        assert c[8:] not in (a[8:], b[8:])


@ASYNCIO_ONLY
@pytest.mark.parametrize(("asked", "given"), [(0, 0), (1, 1), (4096, 4096), (ROOM, ROOM), (ROOM + 1, ROOM),
                                               (0xFFFFFFFF, ROOM)])
async def test_random_is_bounded_by_the_output_buffer(guest: Path, asked: int, given: int) -> None:
    async with aionub.Sandbox.create(guest) as sb:
        assert await result(sb, req(_abi.SYS_RANDOM, "I", asked)) == given


# ---- SET_FS (fast) ---------------------------------------------------------------------------


@ASYNCIO_ONLY
async def test_set_fs_sets_the_base_and_refuses_non_canonical_addresses(guest: Path) -> None:
    async with aionub.Sandbox.create(guest) as sb:
        for base in (0x7000_1000, 0, 0x7FFF_FFFF_FFFF, 0xFFFF_8000_0000_0000):
            assert await result(sb, req(_abi.SYS_SET_FS, "Q", base)) == 0
            assert await sb.call("read_fs_base") & 0xFFFF_FFFF_FFFF_FFFF == base
        for bad in (0x8000_0000_0000, 0x8000_0000_0000_0000, 0x0001_0000_0000_0000, 0xFFFF_7FFF_FFFF_FFFF):
            assert await result(sb, req(_abi.SYS_SET_FS, "Q", bad)) == -errno.EINVAL
            assert await sb.call("read_fs_base") & 0xFFFF_FFFF_FFFF_FFFF == 0xFFFF_8000_0000_0000
        assert not sb.poisoned


@ASYNCIO_ONLY
async def test_boot_flag_fsgsbase_matches_cr4(guest: Path) -> None:
    async with aionub.Sandbox.create(guest) as sb:
        flags = await sb.call("boot_flags")
        cr4 = statedump.dump(sb)["sregs.cr4"]
        assert isinstance(cr4, int)
        assert bool(flags & BOOT_FSGSBASE) == bool(cr4 & CR4_FSGSBASE)
        assert flags & ~BOOT_FSGSBASE == 0


# ---- fast ops stay in C -----------------------------------------------------------------------


@ASYNCIO_ONLY
async def test_fast_ops_do_not_reach_python(guest: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    seen: list[int] = []
    original = SystemServices.serve

    async def spy(self: SystemServices, output: memoryview, length: int) -> None:
        seen.append(length)
        await original(self, output, length)

    monkeypatch.setattr(SystemServices, "serve", spy)
    async with aionub.Sandbox.create(guest) as sb:
        before = sb.stats()
        for request in (req(_abi.SYS_CLOCK, "I", 1), req(_abi.SYS_RANDOM, "I", 16), req(_abi.SYS_SET_FS, "Q", 0)):
            assert await sb.call("sys_repeat", request, 100) >= 0
        after = sb.stats()
        assert after["sys_fast"] - before["sys_fast"] == 300
        assert after["calls"] - before["calls"] == 3
        assert after["runs"] - before["runs"] == 303  # one KVM_RUN per re-entry
        assert seen == []
        assert aionub.process_stats()["sys_fast"] >= 300
        # A slow op does reach Python.
        assert await sb.call("sys_repeat", req(_abi.SYS_READ, "I", 10), 2) == 0
        assert seen == [8, 8]


async def test_a_guest_making_only_fast_requests_is_still_stopped(guest: Path) -> None:
    async with aionub.Sandbox.create(guest) as sb:
        snap = await sb.snapshot()
        started = time.monotonic()
        with pytest.raises(aionub.CallTimeout):
            await sb.call("sys_repeat", req(_abi.SYS_CLOCK, "I", 1), 1 << 62, timeout=0.05)
        assert time.monotonic() - started < 2
        assert sb.poisoned
        await sb.restore(snap)
        with anyio.move_on_after(0.05) as scope:
            await sb.call("sys_repeat", req(_abi.SYS_RANDOM, "I", 64), 1 << 62)
        assert scope.cancelled_caught and sb.poisoned


@ASYNCIO_ONLY
@pytest.mark.parametrize(
    ("request_", "length", "words"),
    [
        (req(_abi.SYS_CLOCK, "I", 1), 6, "CLOCK"),
        (req(_abi.SYS_CLOCK, "I", 1) + b"\0\0\0\0", -1, "CLOCK"),  # trailing bytes
        (req(_abi.SYS_RANDOM, "I", 1), 4, "RANDOM"),
        (req(_abi.SYS_SET_FS, "Q", 0), 8, "SET_FS"),
        (req(_abi.SYS_SET_FS, "Q", 0) + b"\0", -1, "SET_FS"),
        (b"\x01\x00", -1, "system request"),  # too short for an op
        (b"", -1, "system request"),
    ],
)
async def test_malformed_fast_requests_are_protocol_errors(
    guest: Path, request_: bytes, length: int, words: str
) -> None:
    async with aionub.Sandbox.create(guest) as sb:
        assert words in await protocol_error(sb, request_, length=length)


@ASYNCIO_ONLY
async def test_a_length_past_the_output_buffer_is_refused(guest: Path) -> None:
    async with aionub.Sandbox.create(guest) as sb:
        with pytest.raises(aionub.GuestProtocolError, match="claimed"):
            await sys(sb, req(_abi.SYS_CLOCK, "I", 1), length=OUTPUT_SIZE + 1)


@ASYNCIO_ONLY
@pytest.mark.parametrize("op", [0, 4, 15, 21, 1000, 0xFFFFFFFF])
async def test_unknown_ops_are_enosys(guest: Path, op: int) -> None:
    async with aionub.Sandbox.create(guest) as sb:
        assert await result(sb, req(op) + b"anything") == -errno.ENOSYS
        assert not sb.poisoned


# ---- WRITE ---------------------------------------------------------------------------------


def write(fd: int, data: bytes, claimed: int | None = None) -> bytes:
    return req(_abi.SYS_WRITE, "II", fd, len(data) if claimed is None else claimed) + data


def guest_records(caplog: pytest.LogCaptureFixture) -> list[tuple[int, str]]:
    return [(r.levelno, r.getMessage()) for r in caplog.records if r.name == "aionub.guest"]


@ASYNCIO_ONLY
async def test_writes_in_a_call_are_log_records_per_line(guest: Path, caplog: pytest.LogCaptureFixture) -> None:
    async with aionub.Sandbox.create(guest) as sb:
        tag = f"[sandbox {sb.id}] "
        with caplog.at_level(logging.INFO, logger="aionub.guest"):
            assert await result(sb, write(1, b"hello\nwor")) == 9
            # the partial line is emitted at the end of the call
            assert guest_records(caplog) == [(logging.INFO, tag + "hello"), (logging.INFO, tag + "wor")]
            caplog.clear()
            assert await sb.call("sys_repeat", write(2, b"ab"), 3) == 2
            assert await result(sb, write(2, b"x\ny\n\n")) == 5
            assert await result(sb, write(1, b"\xff\xfe bad utf-8\n")) == 13
        assert guest_records(caplog) == [
            (logging.WARNING, tag + "ababab"),
            (logging.WARNING, tag + "x"), (logging.WARNING, tag + "y"), (logging.WARNING, tag + ""),
            (logging.INFO, tag + "\ufffd\ufffd bad utf-8"),
        ]
        assert all(r.sandbox_id == sb.id for r in caplog.records if r.name == "aionub.guest")  # type: ignore[attr-defined]


@ASYNCIO_ONLY
async def test_writes_share_the_log_budget(guest: Path, caplog: pytest.LogCaptureFixture) -> None:
    async with aionub.Sandbox.create(guest, max_log_bytes=100) as sb:
        with caplog.at_level(logging.INFO, logger="aionub.guest"):
            assert await sb.call("sys_repeat", write(1, b"0123456789abcdefghi\n"), 10) == 20
        records = guest_records(caplog)
        assert records.count((logging.INFO, f"[sandbox {sb.id}] 0123456789abcdefghi")) == 5
        assert "dropped" in records[-1][1] and records[-1][0] == logging.WARNING
        caplog.clear()
        with caplog.at_level(logging.INFO, logger="aionub.guest"):
            assert await result(sb, write(1, b"next call\n")) == 10  # the budget is per call
        assert guest_records(caplog) == [(logging.INFO, f"[sandbox {sb.id}] next call")]


@ASYNCIO_ONLY
@pytest.mark.parametrize("fd", [0, 3, 255, 0xFFFFFFFF])
async def test_writes_to_other_fds_are_ebadf(guest: Path, fd: int) -> None:
    async with aionub.Sandbox.create(guest) as sb:
        assert await result(sb, write(fd, b"data")) == -errno.EBADF
        assert not sb.poisoned


@ASYNCIO_ONLY
@pytest.mark.parametrize(
    ("request_", "length"),
    [
        (write(1, b"short", claimed=100), -1),  # claims more bytes than the record has
        (write(1, b"x", claimed=0xFFFFFFFF), -1),
        (write(1, b"abc") + b"trailing", -1),
        (req(_abi.SYS_WRITE, "I", 1), -1),  # no length
        (write(1, b"abc"), 9),  # the record is cut short by eax
    ],
)
async def test_malformed_writes_are_protocol_errors(guest: Path, request_: bytes, length: int) -> None:
    async with aionub.Sandbox.create(guest) as sb:
        assert "WRITE" in await protocol_error(sb, request_, length=length)


# ---- READ outside a run --------------------------------------------------------------------


@ASYNCIO_ONLY
async def test_read_outside_a_run_is_end_of_input(guest: Path) -> None:
    async with aionub.Sandbox.create(guest) as sb:
        assert await result(sb, req(_abi.SYS_READ, "I", 100)) == 0
        assert await result(sb, req(_abi.SYS_READ, "I", 0xFFFFFFFF)) == 0
        assert "READ" in await protocol_error(sb, req(_abi.SYS_READ, "I", 1) + b"x")


# ---- STAT and PREAD --------------------------------------------------------------------------

FILES = {"/etc/motd": b"hello world", "/data/empty": b"", "/data/big": bytes(range(256)) * 1024}


def stat(path: bytes) -> bytes:
    return req(_abi.SYS_STAT) + string(path)


def pread(path: bytes, offset: int, limit: int) -> bytes:
    return req(_abi.SYS_PREAD, "QI", offset, limit) + string(path)


async def stat_size(sb: aionub.Sandbox, path: bytes) -> tuple[int, int]:
    rc, size = struct.unpack("<qQ", await sys(sb, stat(path), 16))
    return rc, size


@ASYNCIO_ONLY
async def test_stat_finds_files_by_normalised_absolute_path(guest: Path) -> None:
    async with aionub.Sandbox.create(guest, files=FILES) as sb:
        for path in (b"/etc/motd", b"/etc/../etc/motd", b"//etc/motd", b"/etc/./motd/", b"///etc//motd"):
            assert await stat_size(sb, path) == (0, 11), path
        assert (await stat_size(sb, b"/data/big"))[1] == 256 * 1024
        assert (await stat_size(sb, b"/data/empty")) == (0, 0)
        assert await result(sb, stat(b"/etc/missing")) == -errno.ENOENT
        assert await result(sb, stat(b"/")) == -errno.ENOENT
        assert await result(sb, stat(b"")) == -errno.ENOENT
        assert await result(sb, stat(b"etc/motd")) == -errno.EINVAL
        assert await result(sb, stat(b"./etc/motd")) == -errno.EINVAL
        assert await result(sb, stat(b"/" + b"a" * 256)) == -errno.ENAMETOOLONG
        assert await result(sb, stat(b"/a" * 2048)) == -errno.ENAMETOOLONG
        assert await result(sb, stat("/ünïcode".encode())) == -errno.ENOENT
        assert not sb.poisoned


@ASYNCIO_ONLY
async def test_without_files_every_path_is_missing(guest: Path) -> None:
    async with aionub.Sandbox.create(guest) as sb:
        assert await result(sb, stat(b"/etc/passwd")) == -errno.ENOENT
        assert await result(sb, pread(b"/etc/passwd", 0, 10)) == -errno.ENOENT


@ASYNCIO_ONLY
async def test_pread_reads_from_an_offset_and_stops_at_the_end(guest: Path) -> None:
    async with aionub.Sandbox.create(guest, files=FILES) as sb:
        reply = await sys(sb, pread(b"/etc/motd", 6, 100), 8 + 5)
        assert reply == struct.pack("<q", 5) + b"world"
        assert await result(sb, pread(b"/etc/motd", 11, 100)) == 0
        assert await result(sb, pread(b"/etc/motd", 12, 100)) == 0
        assert await result(sb, pread(b"/etc/motd", 2**64 - 1, 0xFFFFFFFF)) == 0
        assert await result(sb, pread(b"/etc/motd", 0, 0)) == 0
        assert await result(sb, pread(b"/data/big", 0, 0xFFFFFFFF)) == ROOM  # bounded by the buffer
        reply = await sys(sb, pread(b"/data/big", 1000, 16), 24)
        assert reply[8:] == FILES["/data/big"][1000:1016]
        assert await result(sb, pread(b"/nope", 0, 1)) == -errno.ENOENT
        assert await result(sb, pread(b"rel", 0, 1)) == -errno.EINVAL


@ASYNCIO_ONLY
@pytest.mark.parametrize(
    ("request_", "words"),
    [
        (stat(b"/etc/\x00motd"), "NUL"),
        (stat(b"/etc/\xff\xfe"), "UTF-8"),
        (stat(b"/etc/\xed\xa0\x80"), "UTF-8"),  # a surrogate
        (req(_abi.SYS_STAT, "I", 9) + b"/etc/motdX", "NUL terminator"),
        (req(_abi.SYS_STAT, "I", 1000) + b"/etc\x00", "needs"),
        (req(_abi.SYS_STAT, "I", 0xFFFFFFFF) + b"/", "needs"),
        (stat(b"/etc/motd") + b"!", "trailing"),
        (req(_abi.SYS_PREAD, "Q", 0), "needs"),
        (req(_abi.SYS_PREAD, "QI", 0, 1) + string(b"/etc/motd")[:-1], "needs"),
        (pread(b"/etc/motd", 0, 1) + b"\x00", "trailing"),
        (pread(b"\xc0\x80", 0, 1), "UTF-8"),  # an overlong NUL
    ],
)
async def test_malformed_paths_are_protocol_errors(guest: Path, request_: bytes, words: str) -> None:
    async with aionub.Sandbox.create(guest, files=FILES) as sb:
        assert words in await protocol_error(sb, request_)


class Provider(Mapping[str, bytes]):
    """A provider that computes files, and fails for some."""

    def __init__(self) -> None:
        self.asked: list[str] = []

    def __getitem__(self, key: str) -> bytes:
        self.asked.append(key)
        if key == "/boom":
            raise RuntimeError("disk on fire")
        if key == "/wrong":
            return "a str"  # type: ignore[return-value]
        if key.startswith("/gen/"):
            return key.encode() * 2
        raise KeyError(key)

    def __iter__(self) -> Any:
        return iter(())

    def __len__(self) -> int:
        return 0


@ASYNCIO_ONLY
async def test_any_mapping_is_a_provider_and_its_failures_fail_the_call(guest: Path) -> None:
    provider = Provider()
    async with aionub.Sandbox.create(guest, files=provider) as sb:
        assert await stat_size(sb, b"/gen/../gen/x") == (0, 12)
        assert provider.asked == ["/gen/x"]
        assert await result(sb, stat(b"/other")) == -errno.ENOENT
        with pytest.raises(aionub.HostFunctionError, match=r"files provider failed for '/boom'.*disk on fire") as info:
            await sys(sb, stat(b"/boom"))
        assert isinstance(info.value.__cause__, RuntimeError)
        with pytest.raises(aionub.HostFunctionError, match="returned str for '/wrong'"):
            await sys(sb, pread(b"/wrong", 0, 1))
        assert not sb.poisoned  # the guest got -EIO and finished its call
        assert await sb.call("add", 1, 1) == 2


@ASYNCIO_ONLY
async def test_a_dict_stays_live(guest: Path) -> None:
    files = {"/a": b"1"}
    async with aionub.Sandbox.create(guest, files=files) as sb:
        assert await stat_size(sb, b"/a") == (0, 1)
        files["/b"] = bytearray(b"22")
        files["/c"] = memoryview(b"333")  # type: ignore[assignment]
        del files["/a"]
        assert await result(sb, stat(b"/a")) == -errno.ENOENT
        assert await stat_size(sb, b"/b") == (0, 2)
        assert await sys(sb, pread(b"/c", 1, 5), 10) == struct.pack("<q", 2) + b"33"


@pytest.mark.no_kvm
@pytest.mark.parametrize(
    ("files", "error", "words"),
    [
        ([("/a", b"")], TypeError, "mapping"),
        ({"a": b""}, ValueError, "absolute"),
        ({"/a\x00": b""}, ValueError, "NUL"),
        ({"/a/../b": b""}, ValueError, "'/b'"),
        ({"/a/": b""}, ValueError, "'/a'"),
        ({b"/a": b""}, TypeError, "str"),
        ({"/a": "text"}, TypeError, "bytes-like"),
    ],
)
def test_files_are_checked_at_create(files: Any, error: type[Exception], words: str) -> None:
    with pytest.raises(error, match=words):
        aionub.Sandbox.create(aionub.DEMO_GUEST, files=files)
    with pytest.raises(error, match=words):
        aionub.SandboxPool(aionub.DEMO_GUEST, files=files)


# ---- SLEEP ---------------------------------------------------------------------------------


def sleep(seconds: float) -> bytes:
    return req(_abi.SYS_SLEEP, "Q", int(seconds * 1e9))


async def test_sleep_sleeps_on_the_event_loop(guest: Path) -> None:
    async with aionub.Sandbox.create(guest) as sb:
        ticks = 0

        async def ticker() -> None:
            nonlocal ticks
            while True:
                await anyio.sleep(0.005)
                ticks += 1

        async with anyio.create_task_group() as tg:
            tg.start_soon(ticker)
            started = time.monotonic()
            assert await result(sb, sleep(0.1)) == 0
            elapsed = time.monotonic() - started
            tg.cancel_scope.cancel()
        assert 0.1 <= elapsed < 1.5
        # The loop ran meanwhile (a 5 ms ticker over 100 ms: about 20 ticks
        # on a quiet machine; at least one however busy it is).
        assert ticks >= 1
        assert await result(sb, sleep(0)) == 0


async def test_sleep_never_returns_early(guest: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Not even when the loop's timer fires early: uvloop's timers are in
    whole milliseconds and fire up to a millisecond before the system clock
    reaches their time (about one sleep in a hundred here). Simulated: every
    sleep on the loop ends 0.9 ms early."""
    real_sleep = anyio.sleep

    async def early_sleep(seconds: float) -> None:
        await real_sleep(max(0.0, seconds - 0.0009))

    monkeypatch.setattr(anyio, "sleep", early_sleep)
    async with aionub.Sandbox.create(guest) as sb:
        for _ in range(5):
            started = time.monotonic_ns()
            assert await result(sb, sleep(0.005)) == 0
            assert time.monotonic_ns() - started >= 5_000_000


async def test_sleep_honours_the_timeout(guest: Path) -> None:
    async with aionub.Sandbox.create(guest) as sb:
        started = time.monotonic()
        with pytest.raises(aionub.CallTimeout):
            await sys(sb, sleep(10), timeout=0.05)
        assert time.monotonic() - started < 2
        assert sb.poisoned


async def test_the_longest_sleep_is_still_cancellable(guest: Path) -> None:
    async with aionub.Sandbox.create(guest) as sb:
        started = time.monotonic()
        with pytest.raises(aionub.CallTimeout):
            await sys(sb, req(_abi.SYS_SLEEP, "Q", 2**64 - 1), timeout=0.05)
        assert time.monotonic() - started < 2


async def test_sleep_honours_cancellation(guest: Path) -> None:
    async with aionub.Sandbox.create(guest) as sb:
        started = time.monotonic()
        with anyio.move_on_after(0.05) as scope:
            await sys(sb, sleep(10))
        assert scope.cancelled_caught
        assert time.monotonic() - started < 2
        assert sb.poisoned


async def test_close_stops_a_sleep(guest: Path) -> None:
    sb = await aionub.Sandbox.create(guest)
    errors: list[BaseException] = []

    async def sleeper() -> None:
        try:
            await sys(sb, sleep(10))
        except aionub.SandboxClosed as exc:
            errors.append(exc)

    started = time.monotonic()
    async with anyio.create_task_group() as tg:
        tg.start_soon(sleeper)
        await anyio.sleep(0.05)
        await sb.aclose()
    assert time.monotonic() - started < 2
    assert len(errors) == 1


@ASYNCIO_ONLY
async def test_malformed_sleep_is_a_protocol_error(guest: Path) -> None:
    async with aionub.Sandbox.create(guest) as sb:
        assert "SLEEP" in await protocol_error(sb, req(_abi.SYS_SLEEP, "I", 1))


# ---- snapshots stay exact ------------------------------------------------------------------


@ASYNCIO_ONLY
@pytest.mark.parametrize(
    "request_",
    [
        pytest.param(req(_abi.SYS_RANDOM, "I", 0xFFFFFFFF), id="random-fills-the-output-buffer"),
        pytest.param(req(_abi.SYS_CLOCK, "I", 1), id="clock"),
        pytest.param(req(_abi.SYS_SET_FS, "Q", 0x7000_0000), id="set-fs"),
        pytest.param(pread(b"/data/big", 0, 0xFFFFFFFF), id="pread-fills-the-output-buffer"),
    ],
)
async def test_restore_is_exact_after_system_replies(guest: Path, request_: bytes) -> None:
    async with aionub.Sandbox.create(guest, files=FILES) as sb:
        snap = await sb.snapshot()
        before = statedump.dump(sb)
        await sys(sb, request_)
        assert statedump.diff(before, statedump.dump(sb)) != []
        await sb.restore(snap)
        assert statedump.diff(before, statedump.dump(sb)) == []
        # ...also when the replies came after a snapshot of their own
        await sys(sb, request_)
        snap2 = await sb.snapshot()
        mid = statedump.dump(sb)
        await sys(sb, req(_abi.SYS_RANDOM, "I", 0xFFFFFFFF))
        await sb.restore(snap2)
        assert statedump.diff(mid, statedump.dump(sb)) == []
        await sb.restore(snap)
        assert statedump.diff(before, statedump.dump(sb)) == []
