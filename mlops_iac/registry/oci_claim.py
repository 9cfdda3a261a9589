"""A writer's claim on an OCI repository's index, and when a claim no longer counts.

A claim names when it was made and which process made it: the host, the boot, the pid
namespace and the pid. A claim older than `CLAIM_TTL` is stale; so, at once, is a claim made
on this machine (same host, boot and pid namespace) by a process that no longer runs, the
usual case of a killed CI step retried on the same runner. A pid that runs again (reused)
only makes the claim look alive, so the mistake goes the safe way: waiting for the TTL.
"""

from __future__ import annotations

import os
import socket
from datetime import UTC, datetime
from typing import Any

from .process import running, this_machine

CLAIM_TTL = 120.0
ANNOTATION = "dev.mlops-iac"
CLAIMED = f"{ANNOTATION}.claimed"
HOLDER = f"{ANNOTATION}.holder"
MACHINE = f"{ANNOTATION}.machine"
PID = f"{ANNOTATION}.pid"


def claim_annotations(mine: str) -> dict[str, str]:
    return {
        CLAIMED: datetime.now(UTC).isoformat(),
        HOLDER: f"{socket.gethostname()}:{os.getpid()}:{mine}",
        MACHINE: this_machine(),
        PID: str(os.getpid()),
    }


def is_stale(annotations: dict[str, Any]) -> bool:
    """Whether a claim's writer is gone: it expired, or its process provably died."""
    try:
        age = (datetime.now(UTC) - datetime.fromisoformat(annotations.get(CLAIMED, ""))).total_seconds()
    except ValueError:
        return True  # not a claim this program wrote
    if age > CLAIM_TTL:
        return True
    machine, pid = annotations.get(MACHINE, ""), annotations.get(PID, "")
    return bool(machine) and machine == this_machine() and pid.isdigit() and not running(int(pid))
