from __future__ import annotations

import os
from pathlib import Path

import pytest

from mlops_iac.artifacts import FileArtifact
from mlops_iac.errors import WriterError
from mlops_iac.writer import MANIFEST, apply, plan_changes


def files(**contents: str) -> list[FileArtifact]:
    return [FileArtifact(path=p.replace("__", "/"), content=c) for p, c in contents.items()]


def test_writes_reports_and_is_idempotent(tmp_path: Path) -> None:
    out = tmp_path / "stacks"
    first = apply(files(a__plan_json="1\n", b__plan_json="2\n"), out)
    assert [(c.path, c.kind) for c in first] == [("a/plan_json", "add"), ("b/plan_json", "add")]
    assert (out / "a" / "plan_json").read_text() == "1\n"
    again = apply(files(a__plan_json="1\n", b__plan_json="2\n"), out)
    assert {c.kind for c in again} == {"same"}


def test_dry_run_writes_nothing_and_shows_a_unified_diff(tmp_path: Path) -> None:
    out = tmp_path / "stacks"
    apply(files(a="one\n"), out)
    changes = apply(files(a="two\n"), out, dry_run=True)
    assert changes[0].kind == "modify"
    assert "-one\n+two\n" in changes[0].diff and "--- a/a" in changes[0].diff
    assert (out / "a").read_text() == "one\n"


def test_removes_only_files_it_generated(tmp_path: Path) -> None:
    out = tmp_path / "stacks"
    apply(files(x__old="old\n", keep="k\n"), out)
    (out / "Pulumi.prod.yaml").write_text("encryptionsalt: user-owned\n")
    changes = apply(files(keep="k\n"), out)
    assert ("x/old", "delete") in [(c.path, c.kind) for c in changes]
    assert not (out / "x").exists()  # emptied folders go too
    assert (out / "Pulumi.prod.yaml").read_text() == "encryptionsalt: user-owned\n"
    assert (out / MANIFEST).exists()


@pytest.mark.parametrize(
    "bad", ["../escape", "/etc/passwd", "a/../../b", "a\\b", "", "a//b", "~/x", "a/./../..", "nul\x00"]
)
def test_refuses_paths_that_leave_the_folder(tmp_path: Path, bad: str) -> None:
    with pytest.raises(WriterError, match="refusing"):
        apply([FileArtifact(path=bad, content="x")], tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_refuses_writing_through_a_symlink_out(tmp_path: Path) -> None:
    out = tmp_path / "out"
    outside = tmp_path / "outside"
    outside.mkdir()
    out.mkdir()
    os.symlink(outside, out / "link")
    with pytest.raises(WriterError, match="outside"):
        apply(files(link__x="pwned"), out)
    assert not (outside / "x").exists()


def test_a_failed_write_leaves_the_old_folder_whole(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    out = tmp_path / "out"
    apply(files(a="1\n", b="2\n"), out)
    calls = {"n": 0}
    real = os.fsync

    def flaky(fd: int) -> None:
        calls["n"] += 1
        if calls["n"] == 2:
            raise OSError(28, "No space left on device")
        real(fd)

    monkeypatch.setattr(os, "fsync", flaky)
    with pytest.raises(OSError, match="No space"):
        apply(files(a="new\n", b="new\n"), out)
    monkeypatch.undo()
    assert (out / "a").read_text() == "1\n" and (out / "b").read_text() == "2\n"
    assert [p.name for p in tmp_path.iterdir()] == ["out"]  # no staging folder left behind


def test_a_run_interrupted_between_renames_is_recovered(tmp_path: Path) -> None:
    out = tmp_path / "out"
    apply(files(a="1\n"), out)
    os.rename(out, tmp_path / ".out.old-deadbeef")  # as if killed after the first rename
    changes = plan_changes(files(a="1\n"), out)
    assert changes[0].kind == "add"  # before recovery the folder is gone...
    assert {c.kind for c in apply(files(a="1\n"), out)} == {"same"}  # ...apply puts it back
    assert (out / "a").read_text() == "1\n"
