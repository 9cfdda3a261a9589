"""The two things a registry backend must do: keep blobs by digest, and change one model's
index under mutual exclusion. Everything else (numbering, aliases, guards, history) lives
once, in `core.py`, over this interface."""

from __future__ import annotations

import hashlib
import os
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import BinaryIO, Protocol

from ..errors import RegistryError
from .records import ModelIndex

CHUNK = 1 << 20
IndexChange = Callable[[ModelIndex | None], ModelIndex | None]


class Store(Protocol):
    location: str

    def put_blob(self, model: str, source: Path) -> tuple[str, int]:
        """Store the file's bytes; return (digest, size). Storing the same bytes twice is a no-op."""

    def fetch_blob(self, model: str, digest: str, dest: Path) -> None:
        """Write the blob to `dest` (atomically), verifying its digest; corrupted blobs raise."""

    def models(self) -> list[str]:
        """The names of the models with an index."""

    def read_index(self, model: str) -> ModelIndex | None:
        """The model's index as last committed, or None."""

    def update_index(self, model: str, change: IndexChange) -> ModelIndex | None:
        """Apply `change` to the current index with no other writer in between; return the result."""


def sha256_file(handle: BinaryIO, sink: BinaryIO | None = None) -> tuple[str, int]:
    """Hash a stream (copying it to `sink` on the way); return (digest, size)."""
    digest = hashlib.sha256()
    size = 0
    for chunk in iter(lambda: handle.read(CHUNK), b""):
        digest.update(chunk)
        size += len(chunk)
        if sink is not None:
            sink.write(chunk)
    return f"sha256:{digest.hexdigest()}", size


def copy_verified(chunks: Iterator[bytes], digest: str, dest: Path, what: str) -> None:
    """Write `chunks` to `dest` through a temporary file; refuse bytes that do not match."""
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = dest.with_name(f".{dest.name}.{os.getpid()}.part")
    hasher = hashlib.sha256()
    try:
        with open(tmp, "wb") as out:
            for chunk in chunks:
                hasher.update(chunk)
                out.write(chunk)
            out.flush()
            os.fsync(out.fileno())
        if f"sha256:{hasher.hexdigest()}" != digest:
            raise RegistryError(f"{what} is corrupted: its content no longer matches {digest}; it was not served")
        os.replace(tmp, dest)
    finally:
        tmp.unlink(missing_ok=True)
