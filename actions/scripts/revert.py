"""Revert the version change of one deployment in mlops.yaml: its entry goes back, as written,
to the newest earlier commit where it did not serve its canary (the last of its `versions`).

The rollout and abort jobs of the reusable workflow run this on a branch before they open the
pull request of a rolled-back canary. Only that deployment's lines change, so other changes
merged since (another deployment's canary, a new target) stay. (A YAML anchor defined in that
entry and used in another one would break: `mlops-iac validate` after it says so.)

  python revert.py mlops.yaml DEPLOYMENT      (prints the commit reverted to)
"""

from __future__ import annotations

import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

from mlops_iac.errors import MlopsIacError
from mlops_iac.loader import Document, load_file


def _name(entry: dict[str, Any]) -> str:
    return str(entry.get("name") or f"{entry.get('model')}-{entry.get('target')}")


def _served(entry: dict[str, Any]) -> list[str]:
    if entry.get("versions") is not None:
        return [str(v) for v in entry["versions"]]
    return [str(entry[k]) for k in ("version", "alias") if entry.get(k) is not None]


def block(doc: Document, lines: list[str], name: str) -> tuple[int, int, dict[str, Any]] | None:
    """The lines [start, end) of deployment `name`'s entry, and the entry."""
    entries = doc.data.get("deployments") or [] if isinstance(doc.data, dict) else []
    for i, entry in enumerate(entries):
        if isinstance(entry, dict) and _name(entry) == name:
            line, _ = doc.position(("deployments", i))
            dash = lines[line - 1].index("-") if "-" in lines[line - 1] else 0
            end = line
            while end < len(lines):  # the entry ends at the next line indented no deeper than its dash
                text = lines[end]
                if text.strip() and not text.lstrip().startswith("#") and len(text) - len(text.lstrip()) <= dash:
                    break
                end += 1
            return line - 1, end, entry
    return None


def revert(path: Path, name: str) -> str:
    lines = path.read_text(encoding="utf-8").splitlines(keepends=True)
    found = block(load_file(path), lines, name)
    if found is None:
        raise MlopsIacError(f"{path}: no deployment named {name}")
    start, end, entry = found
    canary = _served(entry)[-1]
    history = subprocess.run(
        ["git", "log", "--format=%H", "--", path.name], cwd=path.parent, check=True, capture_output=True, text=True
    ).stdout.split()
    for commit in history:
        old = subprocess.run(
            ["git", "show", f"{commit}^:./{path.name}"], cwd=path.parent, capture_output=True, text=True
        )
        if old.returncode != 0:
            continue  # the file's first commit: nothing before it
        with tempfile.TemporaryDirectory() as folder:
            copy = Path(folder) / path.name
            copy.write_text(old.stdout, encoding="utf-8")
            old_lines = old.stdout.splitlines(keepends=True)
            previous = block(load_file(copy, str(path)), old_lines, name)
        if previous is not None and canary not in _served(previous[2]):
            path.write_text(
                "".join(lines[:start] + old_lines[previous[0] : previous[1]] + lines[end:]), encoding="utf-8"
            )
            return subprocess.run(
                ["git", "rev-parse", f"{commit}^"], cwd=path.parent, check=True, capture_output=True, text=True
            ).stdout.strip()
    raise MlopsIacError(f"{path}: no earlier commit has {name} without version {canary}; revert it by hand")


def main(argv: list[str]) -> int:
    if len(argv) != 2:
        print("usage: revert.py MLOPS_YAML DEPLOYMENT", file=sys.stderr)
        return 2
    try:
        print(revert(Path(argv[0]), argv[1]))
    except (MlopsIacError, subprocess.CalledProcessError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
