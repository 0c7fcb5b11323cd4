"""What this process holds, read from /proc, for the resource tests."""

from __future__ import annotations

import os
import time


def vcpu_threads() -> int:
    """vCPU threads of this process (the C core names them aionub-vcpu)."""
    count = 0
    for tid in os.listdir("/proc/self/task"):
        try:
            with open(f"/proc/self/task/{tid}/comm") as f:
                count += f.read().strip() == "aionub-vcpu"
        except FileNotFoundError:
            pass  # the thread exited meanwhile
    return count


def settled_vcpu_threads(expected: int, timeout: float = 2.0) -> int:
    """vCPU threads once the count reaches ``expected`` (or ``timeout``
    passes). A joined thread can outlive its join in /proc by a moment:
    the kernel wakes the joiner before it removes the thread's entry."""
    deadline = time.monotonic() + timeout
    while (count := vcpu_threads()) != expected and time.monotonic() < deadline:
        time.sleep(0.001)
    return count
