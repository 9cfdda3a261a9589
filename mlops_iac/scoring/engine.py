"""Batch scoring: inputs in fixed parts through one model version, each part written once.

Exactly once, without a coordinator: the parts are a pure function of the inputs and the
settings (every `part_rows` rows of each file); a part's output is written to a temporary
file and renamed into place; the manifest, rewritten atomically by the one process that
owns it after each part, lists the finished parts with their digests. A rerun with
`--resume` (after a crash, a SIGKILL, a preempted pod) trusts only parts that the manifest
lists and whose bytes still match, and recomputes the rest, which gives the same bytes:
row groups follow the batches, and nothing in a file depends on time or on the worker.

The model runs through the server's own code (`ModelRuntime`: the digest check, the handler,
the input check), so a batch is scored exactly as the same rows sent to `serve` would be.
"""

from __future__ import annotations

import contextlib
import json
import multiprocessing
import os
import queue
from collections.abc import Callable, Iterator
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa

from ..errors import MlopsIacError
from ..fsutil import atomic_write
from ..serving.config import ModelConfig
from ..serving.runtime import ModelRuntime, sha256_of
from .features import InputMap, arrays, default_ids, plan_inputs
from .handler import run_model
from .sources import Batch, Source, batches, expand, fingerprint, open_source, prefetch
from .writers import OUTPUT_FORMATS, PartWriter, output_schema

Progress = Callable[[int], None]
DEFAULT_PART_ROWS = 100_000


class ScoringError(MlopsIacError):
    """A run that stopped: too many rejects, or a part that failed. The manifest says where."""


@dataclass(frozen=True)
class Settings:
    batch_size: int = 10_000
    part_rows: int = DEFAULT_PART_ROWS  # rounded up to whole batches
    workers: int = 1
    threads: int | None = None  # onnxruntime threads per worker; default: the cores / workers
    error_threshold: int = 0  # rejected rows tolerated; -1: any number
    ids: tuple[str, ...] | None = None  # default: columns named id or *_id
    format: str = "parquet"
    resume: bool = False
    shard: int = 0  # this process scores parts index % shards == shard (an indexed Job's pod)
    shards: int = 1


@dataclass(frozen=True)
class Part:
    index: int
    input: int
    start: int
    stop: int

    @property
    def name(self) -> str:
        return f"part-{self.index:05d}"


@dataclass(frozen=True)
class Job:
    """Everything a worker needs to score a part; picklable (workers are processes)."""

    model: ModelConfig
    base: Path
    sources: tuple[Source, ...]
    maps: tuple[tuple[InputMap, ...], ...]
    ids: tuple[tuple[str, ...], ...]
    out: Path
    settings: Settings


@dataclass(frozen=True)
class PartResult:
    index: int
    file: str
    sha256: str
    rows_in: int
    rows_out: int
    rejects: int
    rejects_file: str | None
    rejects_sha256: str | None


@dataclass(frozen=True)
class Summary:
    rows_in: int
    rows_out: int
    rejects: int
    parts: int
    skipped: int  # parts already done (resumed)
    manifest: Path
    failed: str | None = None

    def markdown(self, model: str) -> str:
        state = f"failed: {self.failed}" if self.failed else "complete"
        return (
            f"### Batch scoring with {model}: {state}\n\n| rows in | rows out | rejects | parts | resumed |\n"
            f"|---:|---:|---:|---:|---:|\n| {self.rows_in} | {self.rows_out} | {self.rejects} | "
            f"{self.parts} | {self.skipped} |\n"
        )


def prepare(model: ModelConfig, base: Path, inputs: list[str], out: Path, settings: Settings) -> Job:
    """Check everything before any work: the settings, every input's schema against the model."""
    _check_settings(settings)
    part_rows = -(-max(settings.part_rows, settings.batch_size) // settings.batch_size) * settings.batch_size
    settings = replace(settings, part_rows=part_rows)
    threads = settings.threads or max(1, _cores() // settings.workers)
    model = model.model_copy(update={"threads": threads})
    # Verifies the digest and loads the handler: fail early. Kept: one process loads the model once.
    runtime = _runtime(model, base)
    handler = runtime.preprocess is not None
    sources = tuple(open_source(p) for p in expand(inputs))
    maps, ids = [], []
    for source in sources:
        chosen = list(settings.ids) if settings.ids is not None else default_ids(source.schema.names)
        maps.append(tuple(plan_inputs(source.path, source.schema, runtime.inputs, chosen, handler)))
        ids.append(tuple(chosen))
    return Job(model, base, sources, tuple(maps), tuple(ids), out, settings)


def _check_settings(s: Settings) -> None:
    if s.format not in OUTPUT_FORMATS:
        raise MlopsIacError(f"--format {s.format}: expected one of {', '.join(OUTPUT_FORMATS)}")
    if s.batch_size < 1 or s.workers < 1 or s.part_rows < 1 or s.error_threshold < -1:
        raise MlopsIacError(
            "--batch-size, --workers and --part-rows must be at least 1, --error-threshold at least -1 (-1: no limit)"
        )
    if not 0 <= s.shard < s.shards:
        raise MlopsIacError(f"shard {s.shard} of {s.shards}: expected 0 <= shard < shards")


def parts(job: Job) -> list[Part]:
    """Every part of the run, in order; a pure function of the inputs' row counts and settings."""
    out, index = [], 0
    for i, source in enumerate(job.sources):
        for start in range(0, max(source.rows, 1), job.settings.part_rows):
            out.append(Part(index, i, start, min(start + job.settings.part_rows, source.rows)))
            index += 1
    return out


def manifest_path(job: Job) -> Path:
    s = job.settings
    return job.out / ("manifest.json" if s.shards == 1 else f"manifest-{s.shard:05d}-of-{s.shards:05d}.json")


def _header(job: Job) -> dict[str, Any]:
    s = job.settings
    return {
        "model": {"name": job.model.name, "version": job.model.version, "digest": job.model.digest},
        "settings": {
            "batch_size": s.batch_size,
            "part_rows": s.part_rows,
            "format": s.format,
            "shard": s.shard,
            "shards": s.shards,
        },
        "inputs": [{**fingerprint(src), "ids": list(ids)} for src, ids in zip(job.sources, job.ids, strict=True)],
    }


def score(job: Job, progress: Progress | None = None) -> Summary:
    """Score every part of this shard not already done; the manifest records each one."""
    job.out.mkdir(parents=True, exist_ok=True)
    _clean_temporaries(job.out)
    header, path = _header(job), manifest_path(job)
    done = _finished(job, header, path)
    mine = [p for p in parts(job) if p.index % job.settings.shards == job.settings.shard]
    todo = [p for p in mine if p.index not in done]
    state = {"header": header, "done": done}
    _write_manifest(path, state, mine, None)
    failed = None
    try:
        for result in _execute(job, todo, progress):
            done[result.index] = result
            _write_manifest(path, state, mine, None)  # the part counts as done from here on
            rejects = sum(r.rejects for r in done.values())
            if 0 <= job.settings.error_threshold < rejects:
                failed = f"{rejects} rejected rows exceed --error-threshold {job.settings.error_threshold}"
                break
    finally:
        _write_manifest(path, state, mine, failed)
    summary = _summary(done, mine, len(mine) - len(todo), path, failed)
    if failed:
        raise ScoringError(f"{failed} (rejects in {job.out}/rejects-*; manifest {path})")
    return summary


def _summary(done: dict[int, PartResult], mine: list[Part], skipped: int, path: Path, failed: str | None) -> Summary:
    results = [done[p.index] for p in mine if p.index in done]
    return Summary(
        sum(r.rows_in for r in results),
        sum(r.rows_out for r in results),
        sum(r.rejects for r in results),
        len(mine),
        skipped,
        path,
        failed,
    )


def _clean_temporaries(out: Path) -> None:
    for stale in out.glob(".*.tmp"):  # a part being written when the last run died
        with contextlib.suppress(FileNotFoundError):
            stale.unlink()


def _finished(job: Job, header: dict[str, Any], path: Path) -> dict[int, PartResult]:
    if not path.exists():
        return {}
    try:
        old = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise MlopsIacError(f"{path}: unreadable manifest ({exc}); choose another --output") from None
    for key in ("model", "settings", "inputs"):
        if old.get(key) != header[key]:
            raise MlopsIacError(
                f"{path}: this folder holds a run with other {key} ({json.dumps(old.get(key))}); "
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


def _intact(out: Path, name: str, digest: str | None) -> bool:
    return (out / name).is_file() and sha256_of(out / name) == digest


def _write_manifest(path: Path, state: dict[str, Any], mine: list[Part], failed: str | None) -> None:
    done: dict[int, PartResult] = state["done"]
    entries = []
    for p in mine:
        entry: dict[str, Any] = {"index": p.index, "input": p.input, "start": p.start, "stop": p.stop}
        result = done.get(p.index)
        entry.update({"status": "done", **asdict(result)} if result else {"status": "pending"})
        entries.append(entry)
    summary = _summary(done, mine, 0, path, failed)
    complete = all(p.index in done for p in mine) and not failed
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
    atomic_write(path, (json.dumps(document, indent=2, sort_keys=True) + "\n").encode())


def _execute(job: Job, todo: list[Part], progress: Progress | None) -> Iterator[PartResult]:
    if job.settings.workers == 1 or len(todo) <= 1:
        for part in todo:
            yield score_part(job, part, progress)
        return
    yield from _in_processes(job, todo, progress)


def _cores() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


_QUEUE: Any = None


def _init_worker(rows: Any) -> None:
    global _QUEUE
    _QUEUE = rows


def _work(job: Job, part: Part) -> PartResult:
    return score_part(job, part, _QUEUE.put)


def _in_processes(job: Job, todo: list[Part], progress: Progress | None) -> Iterator[PartResult]:
    # spawn, not fork: onnxruntime's thread pools do not survive a fork.
    context = multiprocessing.get_context("spawn")
    rows = context.Queue()
    with ProcessPoolExecutor(
        job.settings.workers, mp_context=context, initializer=_init_worker, initargs=(rows,)
    ) as pool:
        pending: set[Future[PartResult]] = set()
        waiting = list(reversed(todo))
        try:
            while waiting or pending:
                while waiting and len(pending) < 2 * job.settings.workers:  # bounded: a few parts in flight
                    pending.add(pool.submit(_work, job, waiting.pop()))
                finished, pending = wait(pending, timeout=0.2, return_when=FIRST_COMPLETED)
                _drain(rows, progress)
                for future in finished:
                    yield future.result()
        finally:
            for future in pending:
                future.cancel()
        _drain(rows, progress)


def _drain(rows: Any, progress: Progress | None) -> None:
    while True:
        try:
            count = rows.get_nowait()
        except queue.Empty:
            return
        if progress is not None:
            progress(count)


_RUNTIMES: dict[tuple[str, str], ModelRuntime] = {}


def _runtime(model: ModelConfig, base: Path) -> ModelRuntime:
    key = (str(base), model.model_dump_json())  # the file, digest, handler and threads
    if key not in _RUNTIMES:  # one session per process, reused by every part
        _RUNTIMES[key] = ModelRuntime(model, base)
    return _RUNTIMES[key]


def score_part(job: Job, part: Part, progress: Progress | None = None) -> PartResult:
    """Score one part and write its files atomically; the same part always gives the same bytes."""
    runtime = _runtime(job.model, job.base)
    source, maps, ids = job.sources[part.input], job.maps[part.input], job.ids[part.input]
    columns = list(dict.fromkeys([*ids, *(c for m in maps for c in m.columns)]))
    meta = {"model": job.model.name, "version": str(job.model.version), "digest": job.model.digest or ""}
    keep_row = not ids
    base_schema = output_schema(source.schema, ids, keep_row, runtime) if runtime.postprocess is None else None
    output = PartWriter(job.out / f"{part.name}.{_suffix(job)}", job.settings.format, meta, base_schema)
    rejects = PartWriter(job.out / f"rejects-{part.index:05d}.{_suffix(job)}", job.settings.format, meta, None)
    rows_in = rows_out = rejected = 0
    try:
        read = batches(source, part.start, part.stop, job.settings.batch_size, columns, ids)
        for batch, feeds, reasons in prefetch(_converted(read, list(maps))):
            outputs, keep = run_model(runtime, feeds, reasons, batch.table.num_rows)
            output.write(_rows(batch.table, ids, keep, batch.start, keep_row), outputs)
            if reasons:
                rejects.write_rejects(batch.table, ids, batch.start, reasons)
            n = batch.table.num_rows
            rows_in, rows_out, rejected = rows_in + n, rows_out + len(keep), rejected + len(reasons)
            if progress is not None:
                progress(n)
        if rows_in != rows_out + rejected or rows_in != part.stop - part.start:
            raise MlopsIacError(
                f"{source.path} rows {part.start}-{part.stop}: read {rows_in} rows, wrote "
                f"{rows_out}, rejected {rejected}"
            )
        file, digest = output.commit()
        rfile, rdigest = rejects.commit() if rejected else (None, None)
    finally:
        output.abort()
        rejects.abort()
    return PartResult(part.index, file, digest, rows_in, rows_out, rejected, rfile, rdigest)


def _converted(
    read: Iterator[Batch], maps: list[InputMap]
) -> Iterator[tuple[Batch, dict[str, np.ndarray], dict[int, str]]]:
    for batch in read:
        reasons = dict(batch.errors)
        yield batch, arrays(batch.table, maps, reasons), reasons


def _suffix(job: Job) -> str:
    return OUTPUT_FORMATS[job.settings.format]


def _rows(table: pa.Table, ids: tuple[str, ...], keep: np.ndarray, start: int, keep_row: bool) -> pa.Table:
    """The id columns of the scored rows (and their row numbers in the file when there is no id)."""
    chosen = table.select(list(ids))
    if len(keep) != table.num_rows:
        chosen = chosen.take(pa.array(keep))
    if keep_row:
        chosen = chosen.append_column("row", pa.array(keep.astype(np.int64) + start))
    return chosen
