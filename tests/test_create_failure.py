"""A VM whose creation fails half-way leaves nothing behind and can never
run: vm_create() is all-or-nothing (native/vm.c), calls on such a sandbox
get a clean error without entering KVM_RUN, and ab_interrupt_kill() on its
handle returns at once.

The failures are injected with ab_sandbox_inject_create_failure() at steps
after kvm_run is mapped. The C-level scenario runs in a child process with
deadlines: before the fix a kill there spun forever."""

from __future__ import annotations

import errno
import json
import os
import subprocess
import sys
from collections.abc import Iterator
from typing import Any

import pytest
from procinfo import settled_vcpu_threads, vcpu_threads

import aionub
from aionub import _native

lib = _native.lib

STEPS = {
    lib.AB_CREATE_FAIL_CPUID: "KVM_SET_CPUID2 failed",
    lib.AB_CREATE_FAIL_REGISTERS: "KVM_SET_REGS failed",
    lib.AB_CREATE_FAIL_END: "VM creation failed at its last step",
}
STEP_IDS = ["cpuid", "registers", "end"]

# Creates a native sandbox, injects a failure, starts it, then submits two
# CALLs for "spin" and kills; prints what happened as JSON. A spinning guest
# or a kill that does not return is reported, not waited for.
CHILD = r"""
import json, os, select, sys, threading
from aionub import DEMO_GUEST, _native
from aionub._config import SandboxConfig
from aionub._wire import encode_string

lib, ffi = _native.lib, _native.ffi
step = int(sys.argv[1])
report = {}

def fds():
    return len(os.listdir("/proc/self/fd"))

def vcpu_mapped():
    with open("/proc/self/maps") as f:
        return "kvm-vcpu" in f.read()

with open(DEMO_GUEST, "rb") as f:
    image = f.read()
native = _native.NativeSandbox(SandboxConfig().to_native(), image)
efd = os.eventfd(0, os.EFD_NONBLOCK | os.EFD_CLOEXEC)

def wait_event(seconds):
    if not select.select([efd], [], [], seconds)[0]:
        return None  # no event: the guest is running
    kind = lib.ab_sandbox_ack(native.ptr, efd)
    ev = native.event
    return {"kind": kind, "error": ev.error, "message": ffi.string(ev.message).decode()}

report["inject"] = lib.ab_sandbox_inject_create_failure(native.ptr, step)
fds_before = fds()
native.start(efd)
report["create"] = wait_event(30)
report["fds_left"] = fds() - fds_before
report["vcpu_mapped"] = vcpu_mapped()
request = encode_string(b"spin") + b"\x00"
for i in (1, 2):
    native.input[: len(request)] = request
    report[f"submit{i}"] = lib.ab_sandbox_submit(native.ptr, lib.AB_CMD_CALL, efd)
    report[f"call{i}"] = wait_event(10)
    if report[f"call{i}"] is None:
        break
report["runs"] = native.stats()["runs"]
ih = native.interrupt()
returned = threading.Event()
def kill():
    report["kill"] = lib.ab_interrupt_kill(ih)
    returned.set()
threading.Thread(target=kill, daemon=True).start()
report["kill_returned"] = returned.wait(10)
if report["kill_returned"] and all(report.get(f"call{i}") for i in (1, 2)):
    native.destroy()
    report["destroyed"] = True
print(json.dumps(report), flush=True)
os._exit(0)  # a vCPU thread may still spin (the bug): do not wait for it
"""


@pytest.mark.parametrize("step", list(STEPS), ids=STEP_IDS)
def test_half_created_vm_never_runs_and_kill_returns(step: int) -> None:
    try:
        proc = subprocess.run(
            [sys.executable, "-c", CHILD, str(step)], capture_output=True, text=True, timeout=120
        )
    except subprocess.TimeoutExpired as exc:
        pytest.fail(f"the child hung: {exc}")
    assert proc.returncode == 0, proc.stderr
    report = json.loads(proc.stdout)
    assert report["inject"] == 0
    create = report["create"]
    assert create is not None, "no event for the creation"
    assert create["kind"] == lib.AB_EV_CREATE_FAILED
    assert create["error"] == -errno.EIO
    assert STEPS[step] in create["message"]
    # All-or-nothing: the failed creation left no descriptor and no kvm_run.
    assert report["fds_left"] == 0
    assert not report["vcpu_mapped"]
    # Calls get a clean error and never enter KVM_RUN...
    for i in (1, 2):
        assert report[f"submit{i}"] == 0
        call = report[f"call{i}"]
        assert call is not None, f"call {i} did not end: the half-created vCPU is running"
        assert call["kind"] == lib.AB_EV_VM_ERROR, call
        assert call["error"] == -errno.ENODEV
        assert "the VM does not exist" in call["message"]
    assert report["runs"] == 0
    # ...and a kill returns, sending nothing; the sandbox is then destroyed.
    assert report["kill_returned"], "ab_interrupt_kill() did not return"
    assert report["kill"] == 0
    assert report["destroyed"]


@pytest.fixture
def native_sandbox() -> Iterator[_native.NativeSandbox]:
    with open(aionub.DEMO_GUEST, "rb") as f:
        image = f.read()
    native = _native.NativeSandbox(aionub.SandboxConfig().to_native(), image)
    try:
        yield native
    finally:
        native.destroy()


@pytest.mark.parametrize("step", [0, -1, 4, 2**31 - 1])
def test_inject_create_failure_rejects_unknown_steps(native_sandbox: _native.NativeSandbox, step: int) -> None:
    assert lib.ab_sandbox_inject_create_failure(native_sandbox.ptr, step) == -errno.EINVAL


def test_inject_create_failure_after_start_is_refused(native_sandbox: _native.NativeSandbox) -> None:
    efd = os.eventfd(0, os.EFD_CLOEXEC)
    try:
        native_sandbox.start(efd)
        result = lib.ab_sandbox_inject_create_failure(native_sandbox.ptr, lib.AB_CREATE_FAIL_CPUID)
        assert result == -errno.EALREADY
        # The injection came too late: creation succeeds (ack waits for it).
        assert lib.ab_sandbox_ack(native_sandbox.ptr, efd) == lib.AB_EV_READY
    finally:
        os.close(efd)


def _open_fds() -> int:
    return len(os.listdir("/proc/self/fd"))


@pytest.mark.anyio
@pytest.mark.parametrize("step", list(STEPS), ids=STEP_IDS)
async def test_sandbox_create_reports_a_failed_vm_creation_and_leaks_nothing(
    monkeypatch: pytest.MonkeyPatch, step: int
) -> None:
    # The first sandbox of the process opens /dev/kvm for good: do that first.
    async with aionub.Sandbox.create(aionub.DEMO_GUEST) as sb:
        assert await sb.call("add", 1, 2) == 3
    threads, fds = vcpu_threads(), _open_fds()

    class FailingNativeSandbox(_native.NativeSandbox):
        __slots__ = ()

        def __init__(self, config: Any, image: bytes) -> None:
            super().__init__(config, image)
            assert lib.ab_sandbox_inject_create_failure(self.ptr, step) == 0

    monkeypatch.setattr(aionub._sandbox, "NativeSandbox", FailingNativeSandbox)
    with pytest.raises(aionub.VmError, match=f"cannot create the VM: {STEPS[step]}"):
        await aionub.Sandbox.create(aionub.DEMO_GUEST)
    monkeypatch.undo()
    assert settled_vcpu_threads(threads) == threads
    assert _open_fds() == fds
    # The process is fine: the next sandbox works.
    async with aionub.Sandbox.create(aionub.DEMO_GUEST) as sb:
        assert await sb.call("add", 2, 3) == 5
