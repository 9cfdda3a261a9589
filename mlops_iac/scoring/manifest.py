"""The manifest of a run: which parts are done, with their digests; what `--resume` trusts.

One process owns a manifest (one per shard) and rewrites it atomically after each part, so
a reader (or a rerun after a SIGKILL) sees either the old list or the new one. Durability is
spent where it buys something: each manifest write is fsynced (with its folder, which makes
the parts' renames durable too); the parts' bytes are fsynced once, before the manifest says
"complete". A part listed earlier that a power cut tore fails its digest and is scored again.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable
from dataclasses import asdict
from pathlib import Path
from typing import Any

from ..errors import MlopsIacError, one_line
from ..fsutil import atomic_write
from ..serving.runtime import sha256_of
from .jobs import Job, Part, PartResult, summarize
from .sources import fingerprint


class ManifestError(MlopsIacError):
    """The manifest could not be written: the one before it stays, and is still true."""


def manifest_path(job: Job) -> Path:
    s = job.settings
    return job.out / ("manifest.json" if s.shards == 1 else f"manifest-{s.shard:05d}-of-{s.shards:05d}.json")


def header(job: Job) -> dict[str, Any]:
    """What identifies the run: a folder holding another model, settings or inputs is refused."""
    s = job.settings
    return {
        "model": {"name": job.model.name, "version": job.model.version, "digest": job.model.digest},
        "settings": {
            "batch_size": s.batch_size,
            "part_rows": s.part_rows,
            "format": s.format,
            "shard": s.shard,
            "shards": s.shards,
            # A tree ensemble sums in another order on another thread count: other bytes.
            "threads": job.model.threads,
        },
        "inputs": [{**fingerprint(src), "ids": list(ids)} for src, ids in zip(job.sources, job.ids, strict=True)],
    }


def finished(job: Job, head: dict[str, Any], path: Path) -> dict[int, PartResult]:
    """The parts an earlier run finished whose files are still intact (only with --resume)."""
    if not path.exists():
        return {}
    try:
        old = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise MlopsIacError(f"{path}: unreadable manifest ({exc}); choose another --output") from None
    for key in ("model", "settings", "inputs"):
        if old.get(key) != head[key]:
            raise MlopsIacError(
                f"{path}: this folder holds a run with other {key}: {_differences(old.get(key), head[key])}; "
                "choose another --output, or rerun with the same ones"
            )
    if not job.settings.resume:
        raise MlopsIacError(
            f"{job.out} holds a run of this model over these inputs; pass --resume to "
            "finish it, or choose another --output"
        )
    done = {}
    for entry in old.get("parts", []):
        if entry.get("status") != "done":
            continue
        result = PartResult(**{k: entry[k] for k in PartResult.__dataclass_fields__})
        if _intact(job.out, result.file, result.sha256) and (
            result.rejects_file is None or _intact(job.out, result.rejects_file, result.rejects_sha256)
        ):
            done[result.index] = result
    return done


# What a stored setting follows, when no flag of its own name sets it.
_FOLLOWS = {"threads": "--threads, or the CPUs / --workers", "shard": "--shard", "shards": "--shard"}


def _differences(stored: Any, given: Any) -> str:
    """Each setting that differs, stored against given, so the rerun knows which flag to match."""
    if not (isinstance(stored, dict) and isinstance(given, dict)):
        return f"stored {json.dumps(stored)}, given {json.dumps(given)}"
    keys = sorted(k for k in stored.keys() | given.keys() if stored.get(k) != given.get(k))
    return ", ".join(
        f"{k} stored {json.dumps(stored.get(k))}, given {json.dumps(given.get(k))}"
        + (f" (from {_FOLLOWS[k]})" if k in _FOLLOWS else f" (--{k.replace('_', '-')})")
        for k in keys
    )


def make_durable(out: Path, results: Iterable[PartResult]) -> None:
    """Flush the parts' bytes to disk: done once, before the manifest says "complete"."""
    for result in results:
        for name in (result.file, result.rejects_file):
            if name is not None:
                fd = os.open(out / name, os.O_RDONLY)
                try:
                    os.fsync(fd)
                finally:
                    os.close(fd)


def _intact(out: Path, name: str, digest: str | None) -> bool:
    return (out / name).is_file() and sha256_of(out / name) == digest


def write_manifest(
    path: Path, state: dict[str, Any], mine: list[Part], failed: str | None, *, final: bool = False
) -> None:
    """The manifest as the run stands. `final`: the run's last write, after the parts were made
    durable; only it may say "complete", so a reader that trusts it never reads a torn part."""
    done: dict[int, PartResult] = state["done"]
    entries = []
    for p in mine:
        entry: dict[str, Any] = {"index": p.index, "input": p.input, "start": p.start, "stop": p.stop}
        result = done.get(p.index)
        entry.update({"status": "done", **asdict(result)} if result else {"status": "pending"})
        entries.append(entry)
    summary = summarize(done, mine, 0, path, failed)
    complete = final and all(p.index in done for p in mine) and not failed
    document = {
        **state["header"],
        "parts": entries,
        "summary": {
            "rows_in": summary.rows_in,
            "rows_out": summary.rows_out,
            "rejects": summary.rejects,
            "parts": len(mine),
            "parts_done": len([p for p in mine if p.index in done]),
            "status": "failed" if failed else "complete" if complete else "running",
            "error": failed,
        },
    }
    try:
        atomic_write(path, (json.dumps(document, indent=2, sort_keys=True) + "\n").encode())
    except OSError as exc:  # a full disk says only "No space left on device"
        raise ManifestError(f"{path}: cannot write the manifest: {one_line(exc)}") from exc
