from __future__ import annotations

import shutil
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
QUICKSTART = ROOT / "examples" / "quickstart"


@pytest.fixture
def project(tmp_path: Path) -> Path:
    """A folder with the artifacts that test files name (contents do not matter to the spec)."""
    (tmp_path / "model.joblib").write_bytes(b"not a real model")
    (tmp_path / "sample.npy").write_bytes(b"")
    return tmp_path


def copy_into(src: Path, folder: Path) -> Path:
    dst = folder / "mlops.yaml"
    shutil.copyfile(src, dst)
    return dst
