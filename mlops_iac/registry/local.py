"""The local registry: a folder of content-addressed blobs and one JSON index per model.

    REGISTRY/blobs/sha256/<hex>      read-only, named by the sha256 of their bytes
    REGISTRY/index/<model>.json      the model's versions, aliases and history
    REGISTRY/tmp/                    uploads in progress (invisible until renamed), named
                                     <machine>-<pid>-<random>.upload after their writer

Every write is a temporary file, fsync, rename. Index changes hold an flock on the index
folder, which the kernel releases even when the holder is killed, so concurrent
registrations neither lose nor duplicate a version and a crash leaves no partial version.
A writer killed mid-upload leaves its partial file; the next upload on the same machine
removes those whose writer no longer runs (a model can be hundreds of MB).
"""

from __future__ import annotations

import contextlib
import json
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path

from pydantic import ValidationError

from ..errors import RegistryError
from ..fsutil import atomic_write, fsync_dir, locked_dir
from .process import machine_tag, running
from .records import ModelIndex
from .refs import check_name
from .store import CHUNK, IndexChange, copy_verified, sha256_file


class LocalStore:
    def __init__(self, root: Path) -> None:
        self.root = root
        self.location = str(root)

    def _blob(self, digest: str) -> Path:
        algo, _, hexdigest = digest.partition(":")
        if algo != "sha256" or len(hexdigest) != 64 or not all(c in "0123456789abcdef" for c in hexdigest):
            raise RegistryError(f"invalid digest {digest!r}")
        return self.root / "blobs" / "sha256" / hexdigest

    def put_blob(self, model: str, source: Path) -> tuple[str, int]:
        staging = self.root / "tmp"
        staging.mkdir(parents=True, exist_ok=True)
        _remove_dead_uploads(staging)
        fd, tmp = tempfile.mkstemp(dir=staging, prefix=f"{machine_tag()}-{os.getpid()}-", suffix=".upload")
        try:
            with os.fdopen(fd, "wb") as out, open(source, "rb") as src:
                digest, size = sha256_file(src, out)
                out.flush()
                os.fsync(out.fileno())
            target = self._blob(digest)
            if target.exists():
                return digest, size
            target.parent.mkdir(parents=True, exist_ok=True)
            os.chmod(tmp, 0o444)
            os.replace(tmp, target)
            fsync_dir(target.parent)
            return digest, size
        finally:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(tmp)

    def fetch_blob(self, model: str, digest: str, dest: Path) -> None:
        path = self._blob(digest)
        if not path.exists():
            raise RegistryError(f"blob {digest} is missing from {self.location}")
        with open(path, "rb") as handle:
            copy_verified(iter(lambda: handle.read(CHUNK), b""), digest, dest, f"blob {digest}")

    def models(self) -> list[str]:
        folder = self.root / "index"
        if not folder.is_dir():
            return []
        return sorted(p.stem for p in folder.glob("*.json") if not p.name.startswith("."))

    def read_index(self, model: str) -> ModelIndex | None:
        path = self.root / "index" / f"{check_name(model)}.json"
        try:
            return ModelIndex.model_validate_json(path.read_bytes())
        except FileNotFoundError:
            return None
        except ValidationError as exc:
            raise RegistryError(f"{path} is damaged: {exc.errors()[0]['msg']}") from None

    def update_index(self, model: str, change: IndexChange) -> ModelIndex | None:
        path = self.root / "index" / f"{check_name(model)}.json"
        with self._locked():
            current = self.read_index(model)
            new = change(current)
            if new is not None and new != current:
                text = json.dumps(new.model_dump(mode="json"), indent=2, sort_keys=True) + "\n"
                atomic_write(path, text.encode("utf-8"))
            return new

    @contextlib.contextmanager
    def _locked(self) -> Iterator[None]:
        with locked_dir(self.root / "index"):
            yield


def _remove_dead_uploads(staging: Path) -> None:
    """Delete the partial uploads of writers on this machine that no longer run."""
    here = machine_tag()
    if not here:
        return  # without a machine identity a pid proves nothing
    for path in staging.glob(f"{here}-*.upload"):
        pid = path.name.removeprefix(f"{here}-").split("-", 1)[0]
        if pid.isdigit() and not running(int(pid)):
            with contextlib.suppress(FileNotFoundError):
                path.unlink()  # another writer may have removed it first
