"""restore() is exact: after it, everything a guest can observe equals the
snapshot — every byte of guest memory and every vCPU state field KVM
exposes (tests/statedump.py reads them all, independently of the snapshot
code), apart from guest time (statedump.EXCLUDED says why).

The sweep runs every kind of hostile call in the corpus (tests/hostile/)
on a fresh sandbox: snapshot, dump A, the hostile call (and its error),
restore, dump B, and A must equal B field by field. The other tests check
the behaviour a next user would see, on all three event loops.
"""

from __future__ import annotations

import hashlib
import math
import os
import struct
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import statedump
from test_hostile import FORGE_AS, FORGED, INSN_CASES, MEMORY_CASES, PORT_CASES, STACK_CASES, Context

import aionub
from aionub._native import ffi, lib
from hostile import hostile_guest

pytestmark = pytest.mark.anyio

ASYNCIO_ONLY = pytest.mark.parametrize("anyio_backend", [pytest.param(("asyncio", {}), id="asyncio")])

CANARY = 0x1122334455667788  # the initial value of `canary` in hostile.c
MXCSR_DEFAULT = 0x1F80
MXCSR_TRUNCATE_UNMASK_ZM = (MXCSR_DEFAULT & ~0x200) | 0x6000  # RC=toward zero, #ZM unmasked
XM = 19  # SIMD floating-point exception


@pytest.fixture(scope="session")
def guest(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return hostile_guest(tmp_path_factory)


HOSTS = {"ping": lambda x: x}


# ---- the corpus, as calls -----------------------------------------------------------------

Arg = object | Callable[[Context], object]
RETURNS = None  # the call returns normally
ANY = "any"  # implementations differ: returns, or a SandboxError


@dataclass(frozen=True)
class Case:
    fn: str
    args: tuple[Arg, ...]
    expect: type[BaseException] | tuple[type[BaseException], ...] | str | None
    timeout: float | None = None
    kill_after: float | None = None  # kill through the interrupt handle after this long
    changes: str | None = None  # a dump field the call must change (the dump can see it)


def _cases() -> list[Any]:
    c: dict[str, Case] = {}
    # Calls that succeed, or end in a clean error, or are stopped.
    c["add"] = Case("add", (2, 3), RETURNS)
    c["alloc"] = Case("alloc", (300_000,), RETURNS)
    c["call-missing-host"] = Case("call_missing", (), aionub.HostFunctionError)  # a clean error
    c["timeout"] = Case("spin", (), aionub.CallTimeout, timeout=0.03)
    c["kill"] = Case("spin", (), aionub.ExecutionCancelled, kill_after=0.03)
    c["host-loop-timeout"] = Case("host_loop", (), aionub.CallTimeout, timeout=0.05)
    c["log-flood-timeout"] = Case("flood_log_forever", (), aionub.CallTimeout, timeout=0.05)
    c["overflow"] = Case("recurse", (1 << 40,), aionub.StackOverflow)
    # Every fault of test_hostile.py.
    for name, fn, address, _check in MEMORY_CASES:
        c[f"mem-{name}"] = Case(fn, (address,), aionub.GuestFault)
    for where in ("stack", "heap", "data", "bss", "input", "output", "rodata"):
        c[f"exec-{where}"] = Case("exec_written", (where,), aionub.GuestFault)
    for kind, _check in INSN_CASES:
        c[f"insn-{kind}"] = Case("insn", (kind,), aionub.GuestFault)
    for kind in ("vmcall", "vmmcall", "xgetbv", "syscall_bad_rsp", "rdtscp"):
        c[f"insn-{kind}"] = Case("insn", (kind,), ANY)
    for name, kind, port, expect, _check in PORT_CASES:
        c[f"port-{name}"] = Case("port_io", (kind, port), expect)
    c["port-rep-outsl-result"] = Case("port_io", ("rep_outsl_result", 0xE1), ANY)
    for name, rsp, expect, _check in STACK_CASES:
        c[f"stack-{name}"] = Case("stack_at", (rsp,), expect)
    for fill in (0x00, 0x41, 0xFF):
        c[f"smash-{fill:#x}"] = Case("smash_stack", (fill,), aionub.GuestFault)
    for what in ("in_null", "out_tss", "out_size"):  # damage that shows in the next call
        c[f"corrupt-{what}"] = Case("corrupt", (what,), RETURNS)
    c["corrupt-heap"] = Case("corrupt", ("heap",), (aionub.GuestFault, aionub.GuestAborted))
    for what in ("exports", "boot_info"):
        c[f"corrupt-{what}"] = Case("corrupt", (what,), aionub.GuestFault)
    # Every protocol break and forged record.
    for kind, expect, _message in FORGED:
        c[f"forge-{kind}"] = Case(FORGE_AS.get(kind, "forge"), (kind,), expect)
    for kind in ("hostcall_unknown", "hostcall_long_name"):
        c[f"forge-{kind}"] = Case("forge", (kind,), aionub.HostFunctionError)
    for seed in range(6):
        c[f"garbage-{seed}"] = Case("garbage", (seed,), aionub.GuestProtocolError)
    # Each register class, written and left so.
    regs = {
        "mxcsr": (MXCSR_TRUNCATE_UNMASK_ZM, "xsave.legacy.mxcsr"),
        "x87": (0x0C7F, "xsave.legacy.fcw"),  # round toward zero, and two values pushed
        "xmm15": (0x5A5A5A5A5A5A5A5A, "xsave.legacy.xmm15"),
        "ymm15": (0x0123456789ABCDEF, "xsave.avx.ymm15_hi128"),
        "zmm31": (0x0FEDCBA987654321, "xsave.hi16_zmm.zmm31"),
        "k7": (0x7FFF_FFFF_FFFF_FFFF, "xsave.opmask.k7"),
        "fsbase": (0, "sregs.fs.base"),  # the thread pointer moved to a copy
        "gsbase": (0x7000_2000, "sregs.gs.base"),
        # Data segment selectors: the (readable) user code segment, and the
        # user data segment with RPL 0.
        "ds": (0x23, "sregs.ds.selector"),
        "es": (0x18, "sregs.es.selector"),
        "fs": (0x18, "sregs.fs.selector"),
        "gs": (0x23, "sregs.gs.selector"),
    }
    for what, (value, field) in regs.items():
        # Loading FS clears the FS base, musl's thread pointer: the guest
        # faults at its next stack-protector check.
        expect = aionub.GuestFault if what == "fs" else RETURNS
        c[f"reg-{what}"] = Case("set_reg", (what, value), expect, changes=field)
    # The thread pointer aimed outside guest memory: the guest faults.
    c["reg-fsbase-wild"] = Case("set_reg", ("fsbase", 0x7000_1000), aionub.GuestFault, changes="sregs.fs.base")
    # Null selectors are legal at CPL3 too (kvm_pvm does not show them in
    # kvm_sregs, so there is no field to see change).
    for seg in ("ds", "es", "fs", "gs"):
        c[f"reg-{seg}-null"] = Case("set_reg", (seg, 0), aionub.GuestFault if seg == "fs" else RETURNS)
    c["reg-flags-df"] = Case("set_reg", ("flags", 0x400), RETURNS, changes="regs.rflags")
    c["reg-flags-ac"] = Case("set_reg", ("flags", 0x40000), RETURNS, changes="regs.rflags")
    # String input from a hypercall port into the guest's memory.
    for kind in ("insb", "insw", "insl", "insl_down"):
        for where in ("data", "heap", "table"):
            for count in (3, 1 << 40):
                c[f"ins-{kind}-{where}-{count:#x}"] = Case("rep_ins", (kind, where, count), aionub.GuestProtocolError)
    return [pytest.param(case, id=name) for name, case in c.items()]


CASES = _cases()


async def context_of(sb: aionub.Sandbox) -> Context:
    native = sb._native  # the layout, for the corpus's address arguments
    assert native is not None
    image = {name: await sb.call("addr_of", name) for name in ("code", "rodata", "data", "bss")}
    return Context(native.layout, image)


async def make_call(sb: aionub.Sandbox, case: Case, ctx: Context) -> None:
    """Make the hostile call and check its outcome."""
    args = tuple(a(ctx) if callable(a) else a for a in case.args)
    killer = None
    if case.kill_after is not None:
        handle = sb.interrupt_handle()
        delay = case.kill_after
        killer = threading.Thread(target=lambda: (time.sleep(delay), handle.kill()))
        killer.start()
    try:
        if case.expect is RETURNS:
            await sb.call(case.fn, *args, timeout=case.timeout)
        elif case.expect == ANY:
            try:
                await sb.call(case.fn, *args, timeout=case.timeout)
            except aionub.SandboxError:
                pass
        else:
            assert not isinstance(case.expect, str)
            with pytest.raises(case.expect):
                await sb.call(case.fn, *args, timeout=case.timeout)
    finally:
        if killer is not None:
            killer.join()


# ---- the invariant -------------------------------------------------------------------------


@ASYNCIO_ONLY
@pytest.mark.parametrize("case", CASES)
async def test_restore_brings_back_every_observable_bit(guest: Path, case: Case) -> None:
    async with aionub.Sandbox.create(guest, host_functions=HOSTS) as sb:
        ctx = await context_of(sb)
        snap = await sb.snapshot()
        before = statedump.dump(sb)
        await make_call(sb, case, ctx)
        if case.changes is not None:
            # The dump sees what the call did (so the comparison below can fail).
            changed = statedump.diff(before, statedump.dump(sb))
            assert any(line.startswith(case.changes + ":") for line in changed), changed
        await sb.restore(snap)
        after = statedump.dump(sb)
        assert statedump.diff(before, after) == []
        assert await sb.call("add", 2, 3) == 5


@pytest.mark.parametrize(
    "call",
    [
        ("rep_ins", "insl", "table", 1 << 40),
        ("set_reg", "zmm31", 0x0FEDCBA987654321),
        ("insn", "trap_flag"),
    ],
    ids=["rep-insl-table", "zmm31", "trap-flag"],
)
async def test_restore_that_rebuilds_the_vm_is_exact_too(guest: Path, call: tuple[Any, ...]) -> None:
    # When the vCPU does not settle, restore replaces the VM and vCPU. This
    # KVM always settles, so the test makes restore believe it did not.
    async with aionub.Sandbox.create(guest) as sb:
        snap = await sb.snapshot()
        before = statedump.dump(sb)
        try:
            await sb.call(*call)
        except aionub.SandboxError:
            pass
        lib.ab_sandbox_inject_unsettled(statedump._native_ptr(sb), 1)
        await sb.restore(snap)
        assert lib.ab_sandbox_rebuilds(statedump._native_ptr(sb)) == 1
        after = statedump.dump(sb)
        assert statedump.diff(before, after) == []
        tsc = statedump.msr_field(0x10)
        assert after[tsc] >= before[tsc]  # type: ignore[operator]  # guest time does not go back
        assert await sb.call("add", 2, 3) == 5
        assert await sb.call("get_canary") == CANARY
        # And the new VM's dirty log works: the fast path restores it again.
        await sb.call("set_reg", "k7", 5)
        with pytest.raises(aionub.GuestProtocolError):
            await sb.call("rep_ins", "insl", "data", 4)
        await sb.restore(snap)
        assert lib.ab_sandbox_rebuilds(statedump._native_ptr(sb)) == 1
        assert statedump.diff(before, statedump.dump(sb)) == []
        # The interrupt handle drives the new vCPU.
        with pytest.raises(aionub.CallTimeout):
            await sb.call("spin", timeout=0.03)


async def test_two_dumps_of_an_idle_sandbox_are_equal(guest: Path) -> None:
    async with aionub.Sandbox.create(guest) as sb:
        await sb.call("add", 1, 2)
        a = statedump.dump(sb)
        b = statedump.dump(sb)
        assert statedump.diff(a, b) == []
        # Every exclusion names a field the dump really has.
        assert statedump.EXCLUDED <= a.fields.keys()


async def test_the_dump_names_every_byte_kvm_reports(guest: Path) -> None:
    # The mirrors of KVM's structures: their named fields cover every byte.
    for ctype in (
        "struct ab_kvm_regs",
        "struct ab_kvm_sregs",
        "struct ab_kvm_fpu",
        "struct ab_kvm_vcpu_events",
        "struct ab_kvm_debugregs",
        "struct ab_kvm_xcrs",
    ):
        assert _leaf_bytes(ffi.typeof(ctype)) == ffi.sizeof(ctype), ctype
    async with aionub.Sandbox.create(guest) as sb:
        fields = statedump.read_vcpu(sb)
        xsave_size = int(lib.ab_sandbox_xsave_size(statedump._native_ptr(sb)))
    # The XSAVE pieces tile the whole area.
    pieces = [v for k, v in fields.items() if k.startswith("xsave.")]
    assert all(isinstance(v, bytes) for v in pieces)
    assert sum(len(v) for v in pieces if isinstance(v, bytes)) == xsave_size
    # Every MSR KVM lists is read.
    listed = ffi.new("uint32_t[]", 512)
    n = lib.ab_msr_index_list(listed, 512)
    assert n > 0
    assert all(statedump.msr_field(int(listed[i])) in fields for i in range(n))


def _leaf_bytes(ctype: Any) -> int:
    """Bytes covered by the named leaves of a cffi type."""
    if ctype.kind == "struct":
        return sum(_leaf_bytes(f.type) for _name, f in ctype.fields)
    if ctype.kind == "array":
        return int(ctype.length) * _leaf_bytes(ctype.item)
    return int(ffi.sizeof(ctype))


# ---- what the next user sees ------------------------------------------------------------


async def test_string_input_into_data_and_the_function_table(guest: Path) -> None:
    async with aionub.Sandbox.create(guest) as sb:
        snap = await sb.snapshot()
        for where in ("data", "table"):
            for kind in ("insb", "insl", "insl_down"):
                with pytest.raises(aionub.GuestProtocolError):
                    await sb.call("rep_ins", kind, where, 64)
                await sb.restore(snap)
                assert await sb.call("get_canary") == CANARY, (kind, where)
                assert await sb.call("add", 2, 3) == 5, (kind, where)


def _bits(x: float) -> int:
    return int.from_bytes(struct.pack("<d", x), "little")


async def test_sse_control_state_does_not_survive_restore(guest: Path) -> None:
    async with aionub.Sandbox.create(guest) as fresh:
        tenth = _bits(await fresh.call("fdiv", 1.0, 10.0))
    async with aionub.Sandbox.create(guest) as sb:
        snap = await sb.snapshot()
        await sb.call("set_reg", "mxcsr", MXCSR_TRUNCATE_UNMASK_ZM)
        # It took effect: 1/10 (0x3fb999999999999a to nearest) is truncated,
        # and x/0 traps.
        assert _bits(await sb.call("fdiv", 1.0, 10.0)) == tenth - 1
        with pytest.raises(aionub.GuestFault) as info:
            await sb.call("fdiv", 1.0, 0.0)
        assert info.value.vector == XM
        await sb.restore(snap)
        assert await sb.call("get_reg", "mxcsr") == MXCSR_DEFAULT
        assert _bits(await sb.call("fdiv", 1.0, 10.0)) == tenth
        assert math.isinf(await sb.call("fdiv", 1.0, 0.0))


@pytest.mark.parametrize(
    ("what", "value", "read_as"),
    [
        ("ymm15", 0x0123456789ABCDEF, "ymm15"),
        ("zmm31", 0x0FEDCBA987654321, "zmm31"),
        ("k7", 0x7FFF_FFFF_FFFF_FFFF, "k7"),
        ("xmm15", 0x5A5A5A5A5A5A5A5A, "xmm15"),
        ("x87", 0x0C7F, "x87_cw"),
        ("fsbase", 0, "fsbase"),  # moves the thread pointer to a copy
        ("gsbase", 0x7000_2000, "gsbase"),
    ],
)
async def test_registers_read_back_as_in_the_snapshot(guest: Path, what: str, value: int, read_as: str) -> None:
    # (Data segment selectors are not here: kvm_pvm gives the guest null
    # ones at every entry, whatever it loaded, so a next call cannot see
    # them; the sweep above checks KVM's record of them.)
    async with aionub.Sandbox.create(guest) as sb:
        snap = await sb.snapshot()
        original = await sb.call("get_reg", read_as)
        await sb.call("set_reg", what, value)
        assert await sb.call("get_reg", read_as) != original  # the write took effect
        await sb.restore(snap)
        assert await sb.call("get_reg", read_as) == original


async def test_x87_stack_and_flags_do_not_survive_restore(guest: Path) -> None:
    async with aionub.Sandbox.create(guest) as sb:
        snap = await sb.snapshot()
        status = await sb.call("get_reg", "x87_sw")
        flags = await sb.call("get_reg", "flags")
        await sb.call("set_reg", "x87", 0x037F)  # default control word, two values pushed
        assert await sb.call("get_reg", "x87_sw") != status  # TOP moved
        await sb.restore(snap)
        assert await sb.call("get_reg", "x87_sw") == status
        assert await sb.call("set_reg", "flags", 0x400) == 7  # DF, left set in the vCPU
        await sb.restore(snap)
        assert await sb.call("get_reg", "flags") == flags
        assert await sb.call("add", 2, 3) == 5


async def test_restore_into_another_sandbox_of_the_same_image(guest: Path) -> None:
    async with aionub.Sandbox.create(guest) as a, aionub.Sandbox.create(guest) as b:
        for what, value in (("mxcsr", 0x3F80), ("zmm31", 7), ("k7", 3), ("fsbase", 0)):
            await a.call("set_reg", what, value)
        await a.call("alloc", 100_000)
        snap = await a.snapshot()
        want = statedump.dump(a)
        await b.call("set_reg", "ymm15", 99)
        with pytest.raises(aionub.GuestProtocolError):
            await b.call("rep_ins", "insl", "table", 64)
        await b.restore(snap)  # a different sandbox: the full copy path
        assert statedump.diff(want, statedump.dump(b)) == []
        assert await b.call("get_reg", "k7") == 3
        assert await b.call("add", 2, 3) == 5


@pytest.mark.parametrize("cpu", [0, 1])
async def test_rdtscp_reads_the_host_cpu_or_faults(guest: Path, cpu: int) -> None:
    # docs/security.md: kvm_pvm runs rdtscp natively, returning the host's
    # TSC_AUX (the host CPU number), although the guest's CPUID lacks it;
    # elsewhere KVM refuses it with #UD. The vCPU thread inherits the
    # creating thread's CPU affinity.
    if cpu not in os.sched_getaffinity(0):
        pytest.skip(f"this process may not run on CPU {cpu}")
    saved = os.sched_getaffinity(0)
    os.sched_setaffinity(0, {cpu})
    try:
        async with aionub.Sandbox.create(guest) as sb:
            try:
                assert await sb.call("insn", "rdtscp") == cpu
            except aionub.GuestFault as exc:
                assert exc.vector == 6  # #UD
    finally:
        os.sched_setaffinity(0, saved)


# ---- image identity --------------------------------------------------------------------------


def _one_byte_different(image: bytes) -> bytes:
    """The same guest with the canary's initial value changed in one byte."""
    at = image.index(CANARY.to_bytes(8, "little"))
    return image[:at] + bytes([image[at] ^ 0x01]) + image[at + 1 :]


async def test_a_snapshot_is_refused_by_a_sandbox_of_another_image(guest: Path) -> None:
    x = guest.read_bytes()
    y = _one_byte_different(x)
    async with aionub.Sandbox.create(x) as a, aionub.Sandbox.create(y) as b:
        assert await b.call("get_canary") == CANARY ^ 0x01  # a working guest, one byte apart
        snap = await a.snapshot()
        with pytest.raises(ValueError, match="different guest image"):
            await b.restore(snap)
        assert await b.call("add", 2, 3) == 5


async def test_the_image_identity_is_its_sha256(guest: Path) -> None:
    x = guest.read_bytes()
    async with aionub.Sandbox.create(x) as a:
        snap = await a.snapshot()
    digest = ffi.new("uint8_t[32]")
    lib.ab_snapshot_image_sha256(snap._ptr, digest)
    assert bytes(digest) == hashlib.sha256(x).digest()
