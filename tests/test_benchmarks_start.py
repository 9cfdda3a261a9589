"""Every benchmark script starts: its imports resolve and it parses its arguments.

The benchmarks are run by hand, not by the suite, so a rename in `mlops_iac` could break one
unnoticed (it happened: `benchmarks/drift.py` imported `baseline` from the wrong module).
`--help` imports the script's top level and exits before any measuring.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

BENCHMARKS = sorted((Path(__file__).resolve().parents[1] / "benchmarks").glob("*.py"))


@pytest.mark.parametrize("script", BENCHMARKS, ids=lambda p: p.name)
def test_the_benchmark_starts(script: Path) -> None:
    done = subprocess.run([sys.executable, str(script), "--help"], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith("usage:"), done.stdout
