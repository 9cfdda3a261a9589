"""The files of collected records that `monitor drift` and `shadow report` read."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from ..errors import MlopsIacError


def collected_files(paths: Sequence[Path]) -> list[Path]:
    """The files of collected records: a file as given, a folder's *.jsonl files and their
    rotations (one per server worker: requests.jsonl, requests.w1.jsonl, ...)."""
    files: list[Path] = []
    for path in paths:
        if path.is_dir():
            files += sorted(p for p in path.rglob("*.jsonl*") if p.is_file())
        elif path.is_file():
            files.append(path)
        else:
            raise MlopsIacError(f"{path}: no such file or folder of collected records")
    return files
