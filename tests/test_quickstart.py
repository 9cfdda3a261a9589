"""The README's first command, run as written: the quickstart end to end."""

from __future__ import annotations

import os
import subprocess

from .conftest import QUICKSTART, free_port


def test_quickstart_runs_end_to_end() -> None:
    done = subprocess.run(
        ["bash", str(QUICKSTART / "run.sh")],
        capture_output=True,
        text=True,
        timeout=900,
        env={**os.environ, "PORT": str(free_port())},
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    out = done.stdout
    for step in (
        "1. train",
        "2. validate",
        "3. register",
        "4. convert",
        "5. profile",
        "6. build",
        "8. synth",
        "10. predict",
        "11. send the sample",
        "12. drift",
    ):
        assert f"== {step}" in out
    assert "parity on 45 sample rows: passed" in out
    assert "iris@1: cpu " in out and "replicas 1-" in out  # the profile's recommendation
    assert "iris@1: context sha256:" in out  # the build context
    assert "[6.9, 3.1, 5.4, 2.1] -> virginica" in out
    assert "answered over the v2 protocol" in out
    assert out.rstrip().endswith("no drift: every column under PSI 0.2")  # the sample against its own baseline
