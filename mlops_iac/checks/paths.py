"""A path that does not exist yet although `train` is set: written by training, or a typo?

A missing artifact is only a warning while the model's `train` command will write it. But
once training has run, a file of a near name beside it and a train script that never names
the path say the path is mistyped: that is an error, with the file that exists.
"""

from __future__ import annotations

import difflib
import shlex
from pathlib import Path

SCRIPT_LIMIT = 1 << 20  # train scripts are read to see which files they name; a data file is not


def near_miss(root: Path, value: str, train: str) -> str | None:
    """The existing file `value` most likely meant, when `train` does not name `value`."""
    wanted = root / value
    if not wanted.parent.is_dir():
        return None
    names = sorted(p.name for p in wanted.parent.iterdir() if p.is_file() and p.name != wanted.name)
    close = difflib.get_close_matches(wanted.name, names, n=1, cutoff=0.8)
    if not close or _named_by_train(root, train, wanted.name):
        return None
    return (Path(value).parent / close[0]).as_posix()


def _named_by_train(root: Path, train: str, name: str) -> bool:
    """Whether a file the command runs (`python train.py`) names `name`: training writes it."""
    try:
        words = shlex.split(train)
    except ValueError:
        words = train.split()
    if name in words or any(w.endswith(("=" + name, "/" + name)) for w in words):
        return True
    for word in words:
        script = root / word
        small = script.is_file() and script.stat().st_size <= SCRIPT_LIMIT
        if small and name in script.read_text(encoding="utf-8", errors="replace"):
            return True
    return False
