"""What this process holds, read from /proc, for the resource tests."""

from __future__ import annotations

import os


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
