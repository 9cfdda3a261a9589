"""Portable registry archives: `models export` and `models import`.

A deterministic tar.gz (sorted entries, zero times and owners) with each model's index and
the blobs it names. Import accepts only the exact entry names it writes (no links, no `..`,
no absolute paths) and verifies every blob's digest before any index changes.
"""

from __future__ import annotations

import functools
import gzip
import io
import json
import re
import tarfile
import tempfile
from pathlib import Path

from pydantic import ValidationError

from ..errors import RegistryError
from ..fsutil import atomic_write
from .core import Registry, now
from .records import Event, ModelIndex
from .refs import check_name

FORMAT = "mlops-iac-registry-archive/v1"
_BLOB = re.compile(r"^blobs/sha256/([0-9a-f]{64})$")
_INDEX = re.compile(r"^index/([a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?)\.json$")


def _add(tar: tarfile.TarFile, name: str, data: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    info.mode = 0o644
    info.mtime = 0
    tar.addfile(info, io.BytesIO(data))


def _digests(index: ModelIndex) -> list[str]:
    return sorted({d for v in index.versions.values() for d in (v.digest, *(a.digest for a in v.artifacts.values()))})


def export_archive(registry: Registry, dest: Path, models: list[str] | None = None) -> list[str]:
    names = sorted(models or registry.models())
    indexes = [registry.index(check_name(n)) for n in names]
    buffer = io.BytesIO()
    written: set[str] = set()
    with (
        gzip.GzipFile(fileobj=buffer, mode="wb", mtime=0) as gz,
        tarfile.open(fileobj=gz, mode="w", format=tarfile.PAX_FORMAT) as tar,
        tempfile.TemporaryDirectory() as tmp,
    ):
        _add(tar, "archive.json", json.dumps({"format": FORMAT, "models": names}).encode())
        for index in indexes:
            _add(
                tar,
                f"index/{index.model}.json",
                json.dumps(index.model_dump(mode="json"), indent=2, sort_keys=True).encode(),
            )
        for index in indexes:
            for digest in _digests(index):
                if digest in written:
                    continue
                blob = Path(tmp) / "blob"
                registry.store.fetch_blob(index.model, digest, blob)  # verified on the way out
                _add(tar, f"blobs/sha256/{digest.removeprefix('sha256:')}", blob.read_bytes())
                written.add(digest)
    atomic_write(dest, buffer.getvalue())
    return names


def import_archive(registry: Registry, source: Path) -> list[str]:
    """Import every model of the archive; blobs are verified before any index changes."""
    indexes: list[ModelIndex] = []
    with tempfile.TemporaryDirectory() as tmp:
        try:
            with tarfile.open(source, mode="r:gz") as tar:
                for member in tar.getmembers():
                    _read_member(tar, member, Path(tmp), indexes)
        except (OSError, tarfile.TarError, EOFError) as exc:
            raise RegistryError(f"{source} is not a readable registry archive: {exc}") from None
        for index in indexes:
            for digest in _digests(index):
                staged = Path(tmp) / digest.removeprefix("sha256:")
                if not staged.exists():
                    raise RegistryError(f"the archive lacks blob {digest} of {index.model}; nothing imported")
                if registry.store.put_blob(index.model, staged)[0] != digest:
                    raise RegistryError(f"archive blob {digest} does not match its digest; nothing imported")
        for index in indexes:
            registry.store.update_index(index.model, functools.partial(_merge, incoming=index))
    return [i.model for i in indexes]


def _read_member(tar: tarfile.TarFile, member: tarfile.TarInfo, tmp: Path, indexes: list[ModelIndex]) -> None:
    name = member.name
    if name == "archive.json":
        return
    if not member.isfile() or not (_BLOB.match(name) or _INDEX.match(name)):
        raise RegistryError(
            f"refusing archive entry {name!r}: only archive.json, "
            "index/<model>.json and blobs/sha256/<hex> regular files are allowed"
        )
    handle = tar.extractfile(member)
    assert handle is not None
    blob = _BLOB.match(name)
    if blob:
        (tmp / blob.group(1)).write_bytes(handle.read())
        return
    try:
        index = ModelIndex.model_validate_json(handle.read())
    except ValidationError as exc:
        raise RegistryError(f"archive entry {name} is not a model index: {exc.errors()[0]['msg']}") from None
    if f"index/{index.model}.json" != name:
        raise RegistryError(f"archive entry {name} holds model {index.model!r}")
    indexes.append(index)


def _merge(current: ModelIndex | None, incoming: ModelIndex) -> ModelIndex:
    if current is None:
        return incoming.model_copy(
            update={
                "history": (
                    *incoming.history,
                    Event(time=now(), action="import", detail={"versions": sorted(incoming.versions)}),
                )
            }
        )
    for number, version in incoming.versions.items():
        mine = current.versions.get(number)
        if mine is not None and mine.digest != version.digest:
            raise RegistryError(
                f"{current.model}@{number} differs here ({mine.digest}) and in the "
                f"archive ({version.digest}); nothing imported for this model"
            )
    added = sorted(set(incoming.versions) - set(current.versions))
    if not added:
        return current
    return current.model_copy(
        update={
            "versions": {**current.versions, **{n: incoming.versions[n] for n in added}},
            "next_version": max(current.next_version, incoming.next_version),
            "aliases": {**incoming.aliases, **current.aliases},
            "history": (*current.history, Event(time=now(), action="import", detail={"versions": added})),
        }
    )
