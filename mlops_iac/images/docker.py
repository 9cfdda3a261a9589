"""Building and pushing with the local Docker engine (the docker CLI, as users run it)."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from pathlib import Path

from ..errors import MlopsIacError


def _docker(*args: str, timeout: float = 1800) -> str:
    if shutil.which("docker") is None:
        raise MlopsIacError("the docker CLI is not installed; build the context with your own builder")
    # The classic builder: BuildKit is not on every engine, and --network none means the same to both.
    env = {**os.environ, "DOCKER_BUILDKIT": os.environ.get("DOCKER_BUILDKIT", "0")}
    done = subprocess.run(["docker", *args], capture_output=True, text=True, timeout=timeout, env=env)
    if done.returncode != 0:
        raise MlopsIacError(f"docker {args[0]} failed:\n{(done.stderr or done.stdout)[-3000:]}")
    return done.stdout


def build(context: Path, reference: str) -> str:
    """Build with no network at all (the context is hermetic); return the image ID."""
    _docker("build", "--network", "none", "--pull=false", "-t", reference, str(context))
    return _docker("image", "inspect", "--format", "{{.Id}}", reference).strip()


def push(reference: str) -> str:
    """Push and return the registry's manifest digest (sha256:...)."""
    out = _docker("push", reference)
    match = re.search(r"digest: (sha256:[0-9a-f]{64})", out)
    if match is None:
        raise MlopsIacError(f"docker push printed no digest:\n{out[-1000:]}")
    return match.group(1)
