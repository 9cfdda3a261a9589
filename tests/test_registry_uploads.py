"""The local registry's partial uploads: a writer killed mid-upload leaves nothing for good."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

from mlops_iac.registry import LocalStore
from mlops_iac.registry.process import machine_tag

UPLOAD = """
import sys
from pathlib import Path
from mlops_iac.registry import LocalStore
LocalStore(Path(sys.argv[1])).put_blob("iris", Path(sys.argv[2]))
"""


def _partial_uploads(root: Path) -> list[Path]:
    return sorted((root / "tmp").glob("*.upload"))


def _wait_for_partial_upload(root: Path, writer: subprocess.Popen[bytes]) -> None:
    deadline = time.monotonic() + 60  # a hang guard only: the writer is waiting for our bytes
    while not any(p.stat().st_size for p in _partial_uploads(root)):
        assert writer.poll() is None, "the writer ended before it was killed"
        assert time.monotonic() < deadline, "the writer never started its upload"
        time.sleep(0.01)


def test_a_writer_killed_mid_upload_leaves_no_partial_file_after_the_next_upload(tmp_path: Path) -> None:
    root, source = tmp_path / "registry", tmp_path / "model.bin"
    os.mkfifo(source)  # the writer reads what we write: it is mid-upload until we kill it
    writer = subprocess.Popen([sys.executable, "-c", UPLOAD, str(root), str(source)])
    with open(source, "wb") as pipe:
        pipe.write(b"x" * (4 << 20))
        pipe.flush()
        _wait_for_partial_upload(root, writer)
        writer.kill()
        writer.wait()
    assert _partial_uploads(root)  # what the kill left
    (tmp_path / "next.bin").write_bytes(b"another model")
    LocalStore(root).put_blob("iris", tmp_path / "next.bin")
    assert _partial_uploads(root) == []


def test_a_running_writers_partial_upload_is_left_alone(tmp_path: Path) -> None:
    root = tmp_path / "registry"
    (root / "tmp").mkdir(parents=True)
    mine = root / "tmp" / f"{machine_tag()}-{os.getpid()}-abc.upload"  # this test's process runs
    mine.write_bytes(b"half")
    (tmp_path / "next.bin").write_bytes(b"another model")
    LocalStore(root).put_blob("iris", tmp_path / "next.bin")
    assert _partial_uploads(root) == [mine]
