"""What this process holds, read from /proc, for the resource tests."""

from __future__ import annotations

import os
import time


def vcpu_thread_ids() -> set[int]:
    """Kernel ids of this process's vCPU threads (the C core names them
    aionub-vcpu)."""
    found = set()
    for tid in os.listdir("/proc/self/task"):
        try:
            with open(f"/proc/self/task/{tid}/comm") as f:
                if f.read().strip() != "aionub-vcpu":
                    continue
            with open(f"/proc/self/task/{tid}/status") as f:
                # A thread that is exiting has let go of the address space
                # (no Vm* lines) before the kernel removes its entry: it
                # will never run again, so it is not counted.
                if "VmSize:" in f.read():
                    found.add(int(tid))
        except (FileNotFoundError, ProcessLookupError):
            pass  # the thread exited meanwhile
    return found


def vcpu_threads() -> int:
    """How many vCPU threads this process has."""
    return len(vcpu_thread_ids())


def settled_vcpu_threads(expected: int, timeout: float = 2.0) -> int:
    """vCPU threads once the count reaches ``expected`` (or ``timeout``
    passes). A joined thread can outlive its join in /proc by a moment:
    the kernel wakes the joiner before it removes the thread's entry."""
    deadline = time.monotonic() + timeout
    while (count := vcpu_threads()) != expected and time.monotonic() < deadline:
        time.sleep(0.001)
    return count
