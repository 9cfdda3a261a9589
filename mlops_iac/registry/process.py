"""Whether a process that left something behind (a claim, a partial upload) still runs."""

from __future__ import annotations

import hashlib
import os
import socket
from functools import cache
from pathlib import Path


@cache
def this_machine() -> str:
    """Where a pid names one process: host, boot and pid namespace; '' where it cannot be told."""
    try:
        boot = Path("/proc/sys/kernel/random/boot_id").read_text().strip()
        namespace = os.stat("/proc/self/ns/pid").st_ino
    except OSError:
        return ""
    return f"{socket.gethostname()}/{boot}/{namespace}"


def machine_tag() -> str:
    """`this_machine()` short enough for a file name ('' where it cannot be told)."""
    machine = this_machine()
    return hashlib.sha256(machine.encode()).hexdigest()[:12] if machine else ""


def running(pid: int) -> bool:
    """Whether `pid` runs on this machine; a pid that cannot be checked counts as running."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # another user's process: alive
    try:  # a killed child its parent has not reaped yet is a zombie: dead, though kill() finds it
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return True
    return state not in ("Z", "X")
