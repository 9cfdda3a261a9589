"""The only code that writes generated files.

It writes inside one output folder and refuses any path that would leave it. It owns only
the files it generated (listed in a manifest in the folder), so files a user keeps there,
such as Pulumi's encrypted stack settings, survive. A change is made on a copy of the folder
(unchanged files hard-linked) which then replaces the folder by two renames; a crash leaves
the old folder or the new one, and the next run puts a stranded old folder back.
"""

from __future__ import annotations

import difflib
import json
import os
import secrets
import shutil
import tempfile
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Literal

from .artifacts import FileArtifact
from .errors import WriterError
from .fsutil import fsync_dir, locked_dir

MANIFEST = ".mlops-iac-manifest.json"
ChangeKind = Literal["add", "modify", "delete", "same"]


@dataclass(frozen=True)
class Change:
    path: str
    kind: ChangeKind
    diff: str = ""


def safe_relative(path: str) -> PurePosixPath:
    """`path` as a relative path that stays inside its folder, or a WriterError."""
    pure = PurePosixPath(path)
    bad = (
        not path
        or "\\" in path
        or "\x00" in path
        or pure.is_absolute()
        or any(part in ("..", "") for part in path.split("/"))
        or path.startswith("~")
    )
    if bad:
        raise WriterError(
            f"refusing to write {path!r}: generated paths must be relative and stay inside the output folder"
        )
    return pure


def _read_manifest(out: Path) -> set[str]:
    try:
        return set(json.loads((out / MANIFEST).read_text())["files"])
    except (FileNotFoundError, NotADirectoryError):
        return set()
    except (ValueError, KeyError, TypeError) as exc:
        raise WriterError(f"{out / MANIFEST} is damaged ({exc}); remove it to start again") from None


def _inside(out: Path, rel: PurePosixPath) -> Path:
    target = out / rel
    # A symlink inside the folder could point anywhere; resolve and compare.
    resolved_parent = target.parent.resolve()
    if not resolved_parent.is_relative_to(out.resolve()):
        raise WriterError(f"refusing to write {rel}: it resolves outside {out}")
    if target.is_symlink():
        raise WriterError(f"refusing to write {rel}: it is a symbolic link")
    return target


def plan_changes(files: Sequence[FileArtifact], out: Path) -> list[Change]:
    """What applying `files` to `out` would do, with a unified diff per change."""
    wanted = {str(safe_relative(f.path)): f for f in files}
    if len(wanted) != len(files):
        raise WriterError("the plan names the same file twice")
    changes = []
    for rel in sorted(wanted.keys() | _read_manifest(out)):
        target = _inside(out, PurePosixPath(rel))
        old = target.read_bytes() if target.is_file() else None
        if rel in wanted and wanted[rel].create_only and old is not None:
            changes.append(Change(rel, "same"))  # the user's now: Pulumi keeps secrets in it
            continue
        new = wanted[rel].data if rel in wanted else None
        kind: ChangeKind = "same" if old == new else "add" if old is None else "delete" if new is None else "modify"
        if old is None and new is None:
            continue
        changes.append(Change(rel, kind, "" if kind == "same" else _diff(rel, old, new)))
    return changes


def _diff(rel: str, old: bytes | None, new: bytes | None) -> str:
    try:
        before, after = (old or b"").decode("utf-8"), (new or b"").decode("utf-8")
    except UnicodeDecodeError:
        return f"Binary files a/{rel} and b/{rel} differ\n"
    return "".join(
        difflib.unified_diff(
            before.splitlines(keepends=True),
            after.splitlines(keepends=True),
            fromfile=f"a/{rel}" if old is not None else "/dev/null",
            tofile=f"b/{rel}" if new is not None else "/dev/null",
        )
    )


def apply(files: Sequence[FileArtifact], out: Path, *, dry_run: bool = False) -> list[Change]:
    """Make `out` hold exactly `files` (plus any files the user keeps there)."""
    out = out.absolute()
    with locked_dir(out.parent):
        _recover(out)
        changes = plan_changes(files, out)
        if dry_run or all(c.kind == "same" for c in changes):
            return changes
        _swap_in(out, {f.path: f for f in files}, changes)
    return changes


def _recover(out: Path) -> None:
    """Put back a folder stranded between the two renames of an interrupted run."""
    stranded = sorted(out.parent.glob(f".{out.name}.old-*"))
    if stranded and not out.exists():
        os.rename(stranded[-1], out)
        stranded = stranded[:-1]
    for leftover in (*stranded, *out.parent.glob(f".{out.name}.new-*")):
        shutil.rmtree(leftover, ignore_errors=True)


def _swap_in(out: Path, wanted: dict[str, FileArtifact], changes: Iterable[Change]) -> None:
    staging = Path(tempfile.mkdtemp(prefix=f".{out.name}.new-", dir=out.parent))
    try:
        if out.exists():
            shutil.copytree(out, staging, symlinks=True, dirs_exist_ok=True, copy_function=_link_or_copy)
        for change in changes:
            target = staging / change.path
            if change.kind == "delete":
                target.unlink(missing_ok=True)
                _prune_empty(target.parent, staging)
            elif change.kind in ("add", "modify"):
                _write_new(target, wanted[change.path])
        manifest = {
            "files": sorted(p for p, f in wanted.items() if not f.create_only),
            "generated": "by mlops-iac; do not edit",
        }
        _write_new(
            staging / MANIFEST,
            FileArtifact(path=MANIFEST, content=json.dumps(manifest, indent=2, sort_keys=True) + "\n"),
        )
        os.chmod(staging, 0o755)  # noqa: S103 - a source folder, as git would make it
        fsync_dir(staging)
        if out.exists():
            old = out.parent / f".{out.name}.old-{secrets.token_hex(8)}"
            os.rename(out, old)
            os.rename(staging, out)  # between these two renames, _recover() can undo
            shutil.rmtree(old)
        else:
            os.rename(staging, out)
        fsync_dir(out.parent)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise


def _link_or_copy(src: str, dst: str) -> str:
    # Hard links make the copy cheap; every write below replaces a file, never edits it.
    try:
        os.link(src, dst)
    except OSError:
        shutil.copy2(src, dst)
    return dst


def _write_new(target: Path, artifact: FileArtifact) -> None:
    target.parent.mkdir(parents=True, exist_ok=True)
    target.unlink(missing_ok=True)  # never write through a hard link into the old folder
    with open(target, "wb") as handle:
        handle.write(artifact.data)
        handle.flush()
        os.fsync(handle.fileno())
    os.chmod(target, artifact.mode)


def _prune_empty(folder: Path, top: Path) -> None:
    while folder != top and folder.is_dir() and not any(folder.iterdir()):
        folder.rmdir()
        folder = folder.parent


__all__ = ["Change", "apply", "plan_changes", "safe_relative"]
