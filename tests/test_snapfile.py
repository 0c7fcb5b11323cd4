"""Snapshot files: Snapshot.save / Snapshot.load round trips, sparseness, and
refusal of every file that is not one save() wrote, intact: truncated at
many lengths, a byte flipped at many offsets, and (checksum recomputed, so
that the field checks themselves are reached) forged headers, layouts,
lengths, page maps and vCPU states. Refusal is always InvalidSnapshotFile
(or, for vCPU state only KVM refuses, VmError at spawn): never a crash."""

from __future__ import annotations

import hashlib
import os
import struct
from pathlib import Path

import pytest
import statedump

import aionub
from aionub._snapfile import _HEAD, MAGIC
from hostile import hostile_guest

pytestmark = pytest.mark.anyio

SMALL = {"memory_size": 4 * 1024 * 1024}
STATE_AT = _HEAD.size  # the guest name's length field follows the header


@pytest.fixture(scope="module")
def snapfile(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A snapshot file of the demo guest after two calls to counter()."""
    path = tmp_path_factory.mktemp("snap") / "demo.snap"

    async def make() -> None:
        async with aionub.Sandbox.create(aionub.DEMO_GUEST, **SMALL) as sb:
            await sb.call("counter")
            await sb.call("counter")
            (await sb.snapshot()).save(path)

    import anyio

    anyio.run(make)
    return path


def _resealed(data: bytes) -> bytes:
    """``data`` (without its checksum) with a valid checksum appended."""
    return data + hashlib.sha256(data).digest()


def _parts(data: bytes) -> dict[str, tuple[int, int]]:
    """Offset and length of each variable part of a file."""
    pos = _HEAD.size
    out = {}
    for name, fmt in (("name", "<I"), ("ready", "<I"), ("state", "<I"), ("pagemap", "<I"), ("pages", "<Q")):
        size = struct.calcsize(fmt)
        (n,) = struct.unpack_from(fmt, data, pos)
        out[name] = (pos + size, n)
        pos += size + n
    return out


@pytest.fixture(scope="session")
def guest(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return hostile_guest(tmp_path_factory)


async def test_round_trip(guest: Path, tmp_path: Path) -> None:
    async with aionub.Sandbox.create(guest) as sb:
        for what, value in (("mxcsr", 0x3F80), ("zmm31", 7), ("k7", 3)):
            await sb.call("set_reg", what, value)
        await sb.call("alloc", 100_000)
        snap = await sb.snapshot()
        want = statedump.dump(sb)
        snap.save(tmp_path / "s.snap")
        loaded = aionub.Snapshot.load(tmp_path / "s.snap")
        assert loaded.nbytes == snap.nbytes
        assert loaded.image_sha256 == snap.image_sha256 == hashlib.sha256(guest.read_bytes()).hexdigest()
        assert loaded.memory_options == snap.memory_options and loaded.guest == snap.guest
        async with aionub.Sandbox.spawn(loaded) as child:
            assert statedump.diff(want, statedump.dump(child)) == []
            assert await child.call("get_reg", "k7") == 3
        await sb.call("set_reg", "k7", 5)
        await sb.restore(loaded)  # a loaded snapshot restores into a sandbox of the image
        assert statedump.diff(want, statedump.dump(sb)) == []


async def test_the_file_is_sparse_and_saving_replaces(snapfile: Path, tmp_path: Path) -> None:
    snap = aionub.Snapshot.load(snapfile)
    size = snapfile.stat().st_size
    assert snap.nbytes <= size < snap.nbytes + 16 * 1024
    assert size < SMALL["memory_size"] // 4
    target = tmp_path / "again.snap"
    target.write_bytes(b"old contents")
    snap.save(target)
    assert target.read_bytes() == snapfile.read_bytes()  # deterministic, and replaced
    assert [p.name for p in tmp_path.iterdir()] == ["again.snap"]  # no temporary left
    async with aionub.Sandbox.spawn(aionub.Snapshot.load(target)) as sb:
        assert await sb.call("counter") == 3


async def test_a_mismatched_sandbox_is_refused(snapfile: Path, tmp_path: Path) -> None:
    snap = aionub.Snapshot.load(snapfile)
    with pytest.raises(ValueError, match="memory_size"):
        await aionub.Sandbox.spawn(snap, memory_size=8 * 1024 * 1024)
    async with aionub.Sandbox.create(aionub.JS_GUEST, **SMALL) as other:
        with pytest.raises(ValueError, match="different guest image"):
            await other.restore(snap)
    async with aionub.Sandbox.create(aionub.DEMO_GUEST) as bigger:
        with pytest.raises(ValueError, match="memory layout"):
            await bigger.restore(snap)


def test_not_a_snapshot_file(tmp_path: Path) -> None:
    for content in (b"", b"\x7fELF" + bytes(200), MAGIC, MAGIC + bytes(10)):
        path = tmp_path / "x"
        path.write_bytes(content)
        with pytest.raises(aionub.InvalidSnapshotFile):
            aionub.Snapshot.load(path)
    with pytest.raises(FileNotFoundError):
        aionub.Snapshot.load(tmp_path / "missing")
    with pytest.raises(aionub.InvalidSnapshotFile, match="not a regular file"):
        aionub.Snapshot.load("/dev/zero")  # never read without end
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    with pytest.raises(aionub.InvalidSnapshotFile, match="not a regular file"):
        aionub.Snapshot.load(fifo)  # no writer: opening it must not wait for one
    with pytest.raises(aionub.InvalidSnapshotFile, match="not a regular file"):
        aionub.Snapshot.load(tmp_path)
    big = tmp_path / "big"
    with open(big, "wb") as f:
        f.truncate(300 * 1024 * 1024)  # sparse
    with pytest.raises(aionub.InvalidSnapshotFile, match="larger than any snapshot file"):
        aionub.Snapshot.load(big)


def test_every_truncation_is_refused(snapfile: Path, tmp_path: Path) -> None:
    data = snapfile.read_bytes()
    lengths = sorted({*range(0, 300, 7), *range(0, len(data), max(1, len(data) // 97)), len(data) - 1,
                      len(data) - 32, len(data) - 33})
    path = tmp_path / "t.snap"
    for n in lengths:
        path.write_bytes(data[:n])
        with pytest.raises(aionub.InvalidSnapshotFile):
            aionub.Snapshot.load(path)
    path.write_bytes(data + b"\x00")
    with pytest.raises(aionub.InvalidSnapshotFile, match="checksum"):
        aionub.Snapshot.load(path)


def test_every_flipped_byte_is_refused(snapfile: Path, tmp_path: Path) -> None:
    data = snapfile.read_bytes()
    parts = _parts(data)
    offsets = {*range(0, 400, 3), *range(0, len(data), max(1, len(data) // 151)), len(data) - 1}
    offsets |= {at + i for at, n in parts.values() for i in (0, 1, n // 2, n - 1) if 0 <= i < n}
    path = tmp_path / "f.snap"
    for at in sorted(offsets):
        flipped = bytearray(data)
        flipped[at] ^= 0x20
        path.write_bytes(flipped)
        with pytest.raises(aionub.InvalidSnapshotFile):
            aionub.Snapshot.load(path)


def _forge(data: bytes, at: int, value: bytes) -> bytes:
    body = bytearray(data[:-32])
    body[at : at + len(value)] = value
    return _resealed(bytes(body))


def _state_field(data: bytes, offset: int, value: bytes) -> bytes:
    at, _ = _parts(data)["state"]
    return _forge(data, at + offset, value)


# Offsets in the vCPU state record (native/snapfile.c): u32 xsave_size,
# u32 nmsrs, then struct kvm_regs (18 u64: rip at 16*8), kvm_sregs (cs at 0,
# ss at 5*24; each kvm_segment: base u64, limit u32, selector u16, type,
# present, dpl, ...; then ldt, gdt, idt, cr0 at 8*24+2*16, cr3 at +16, cr4 at +24).
REGS = 8
SREGS = REGS + 18 * 8
SEG_DPL = 8 + 4 + 2 + 2
CR3 = SREGS + 8 * 24 + 2 * 16 + 16
CR4 = CR3 + 8


@pytest.mark.parametrize(
    ("what", "forge", "message"),
    [
        ("version", lambda d: _forge(d, 16, struct.pack("<I", 2)), "version 2"),
        ("flags", lambda d: _forge(d, 20, struct.pack("<I", 1)), "flags"),
        ("memory_size", lambda d: _forge(d, 56, struct.pack("<Q", 8 * 1024 * 1024)), "memory_size|layout|page map"),
        ("odd memory_size", lambda d: _forge(d, 56, struct.pack("<Q", 4 * 1024 * 1024 + 1)), "memory_size"),
        ("huge memory_size", lambda d: _forge(d, 56, struct.pack("<Q", 1 << 62)), "memory_size"),
        ("image_end", lambda d: _forge(d, 56 + 16, struct.pack("<Q", 1 << 40)), "image span"),
        ("heap_size", lambda d: _forge(d, 56 + 8 * 8, struct.pack("<Q", 12345)), "layout"),
        ("entry", lambda d: _forge(d, 56 + 12 * 8, struct.pack("<Q", 0)), "entry"),
        ("name length", lambda d: _forge(d, STATE_AT, struct.pack("<I", 1 << 31)), "name"),
        ("name", lambda d: _forge(d, STATE_AT + 4, b"\xff"), "UTF-8"),
        ("ready record", lambda d: _forge(d, _parts(d)["ready"][0], b"\xff\xff\xff\xff"), "READY"),
        ("state length", lambda d: _forge(d, _parts(d)["state"][0] - 4, struct.pack("<I", 100)), "."),
        ("xsave size", lambda d: _state_field(d, 0, struct.pack("<I", 12)), "XSAVE"),
        ("msr count", lambda d: _state_field(d, 4, struct.pack("<I", 1000)), "MSRs"),
        ("msr count small", lambda d: _state_field(d, 4, struct.pack("<I", 1)), "MSRs|bytes"),
        ("cpl0", lambda d: _state_field(d, SREGS + SEG_DPL, b"\x00"), "CPL3"),
        ("cr3", lambda d: _state_field(d, CR3, struct.pack("<Q", 0x5000)), "CPL3"),
        ("page map", lambda d: _forge(d, _parts(d)["pagemap"][0] + 64, b"\xff"), "marks .* pages but"),
        ("pages length", lambda d: _forge(d, _parts(d)["pages"][0] - 8, struct.pack("<Q", 4096)), "."),
    ],
    ids=lambda v: v if isinstance(v, str) else "",
)
def test_forged_fields_are_refused(snapfile: Path, tmp_path: Path, what: str, forge: object, message: str) -> None:
    path = tmp_path / "forged.snap"
    assert callable(forge)
    path.write_bytes(forge(snapfile.read_bytes()))
    with pytest.raises(aionub.InvalidSnapshotFile, match=message):
        aionub.Snapshot.load(path)


async def test_a_page_map_bit_beyond_the_end_is_refused(tmp_path: Path) -> None:
    async with aionub.Sandbox.create(aionub.DEMO_GUEST, memory_size=4 * 1024 * 1024 + 4096) as sb:
        (await sb.snapshot()).save(tmp_path / "odd.snap")  # 1025 pages: 63 bits unused
    data = (tmp_path / "odd.snap").read_bytes()
    aionub.Snapshot.load(tmp_path / "odd.snap")
    at, n = _parts(data)["pagemap"]
    forged = tmp_path / "beyond.snap"
    forged.write_bytes(_forge(data, at + n - 1, bytes([data[at + n - 1] | 0x80])))
    with pytest.raises(aionub.InvalidSnapshotFile, match="beyond the end"):
        aionub.Snapshot.load(forged)


async def test_state_only_kvm_refuses_fails_the_spawn_cleanly(snapfile: Path, tmp_path: Path) -> None:
    data = snapfile.read_bytes()
    (cr4,) = struct.unpack_from("<Q", data, _parts(data)["state"][0] + CR4)
    path = tmp_path / "cr4.snap"
    path.write_bytes(_state_field(data, CR4, struct.pack("<Q", cr4 | (1 << 63))))  # a reserved CR4 bit
    snap = aionub.Snapshot.load(path)  # the file is consistent: only KVM can tell
    with pytest.raises(aionub.VmError, match="KVM refused the snapshot's vCPU state"):
        await aionub.Sandbox.spawn(snap)
    async with aionub.Sandbox.spawn(aionub.Snapshot.load(snapfile)) as sb:  # nothing was left behind
        assert await sb.call("counter") == 3
