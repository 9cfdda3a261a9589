"""A lane of a run: parts claimed one after another, read in batches, through the model, into
each part's files.

The model runs through the server's own code (`ModelRuntime`: the digest check, the handler,
the input check), so a batch is scored exactly as the same rows sent to `serve` would be.

A lane is three threads: the reader (the next batches, read and converted, the next part's
first ones included), this one (onnxruntime), and the writer (each batch encoded and written,
then each part closed and renamed into place). Parts follow each other without a pause: the
last write and the commit of a part overlap the first runs of the next. Started afresh for
each part, a lane idled 12-18 ms per part on reading the first batch, the last write and the
commit, about a sixth of a 10-batch part on 16 cores.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa

from ..errors import MlopsIacError
from ..serving.config import ModelConfig
from ..serving.runtime import ModelRuntime
from .arrow import to_arrow
from .features import arrays
from .handler import run_model
from .jobs import Job, Part, PartResult
from .sources import Batch, batches, prefetch
from .writers import OUTPUT_FORMATS, PartWriter, output_schema

_RUNTIMES: dict[tuple[str, str, int], ModelRuntime] = {}

Claim = Callable[[], Part | None]  # the lane's next part, None when there is none left
Emit = Callable[[str, Any], None]  # ("rows", count) once a batch is written, ("part", PartResult)


def runtime_of(model: ModelConfig, base: Path, lane: int = 0) -> ModelRuntime:
    """Lane `lane`'s session in this process, loaded once and reused by each part it scores: a
    session per lane, so that each keeps its own onnxruntime threads."""
    key = (str(base), model.model_dump_json(), lane)  # the file, digest, handler and threads
    if key not in _RUNTIMES:
        # No spinning: onnxruntime's pool threads would otherwise busy-wait between calls,
        # taking the cores from the threads that read and write the batches around each
        # call, from the other lanes, and from a pod's CPU quota.
        _RUNTIMES[key] = ModelRuntime(model, base, spinning=False)
    return _RUNTIMES[key]


def score_lane(job: Job, claim: Claim, emit: Emit, stop: threading.Event, lane: int = 0) -> None:
    """Score parts from `claim` until it has none; each part's files are written atomically and
    the same part always gives the same bytes. `stop`, set by another thread or process,
    abandons the lane at its next batch: its unfinished parts leave nothing behind."""
    runtime = runtime_of(job.model, job.base, lane)
    unfinished: list[_Files] = []
    try:
        # The writer thread takes tasks in order. A batch is handed over only once the tasks
        # before it are done: memory holds one more batch, and a failed write stops the lane at
        # its next batch. A commit holds no batch and queues behind the part's last write
        # while the next part runs. Leaving the block waits for the last task.
        with ThreadPoolExecutor(1, thread_name_prefix="mlops-iac-write") as writes:
            inflight: list[Future[None]] = []
            files: _Files | None = None
            for part, item in prefetch(_claimed(job, claim, stop)):
                if stop.is_set():
                    raise MlopsIacError(f"{part.name}: stopped before it was complete")
                if files is None:
                    unfinished = [f for f in unfinished if not f.committed]
                    files = _Files(job, part, runtime)
                    unfinished.append(files)
                if item is None:  # the part's end
                    inflight.append(writes.submit(_Commit(files, emit)))
                    files = None
                    continue
                task = _write_task(runtime, files, item, emit)
                _wait(inflight)
                inflight.append(writes.submit(task))
            _wait(inflight)
    finally:
        for left in unfinished:
            left.abort()


def _wait(inflight: list[Future[None]]) -> None:
    """Wait for the writer's tasks in the order given: the first failure is the one raised."""
    while inflight:
        inflight.pop(0).result()


def _claimed(
    job: Job, claim: Claim, stop: threading.Event
) -> Iterator[tuple[Part, tuple[Batch, dict[str, np.ndarray], dict[int, str]] | None]]:
    """Each claimed part's batches with their model inputs, then `(part, None)` at its end."""
    while not stop.is_set() and (part := claim()) is not None:
        source, maps, ids = job.sources[part.input], list(job.maps[part.input]), job.ids[part.input]
        columns = list(dict.fromkeys([*ids, *(c for m in maps for c in m.columns)]))
        for batch in batches(source, part.start, part.stop, job.settings.batch_size, columns, ids):
            reasons = dict(batch.errors)
            yield part, (batch, arrays(batch.table, maps, reasons), reasons)
        yield part, None


class _Files:
    """One part's output and rejects files, and its row counts, while it is being written."""

    def __init__(self, job: Job, part: Part, runtime: ModelRuntime) -> None:
        self.part, self.source, self.ids = part, job.sources[part.input], job.ids[part.input]
        self.keep_row = not self.ids
        meta = {"model": job.model.name, "version": str(job.model.version), "digest": job.model.digest or ""}
        schema = None  # a handler's outputs: the first batch fixes the schema
        if runtime.postprocess is None:
            schema = output_schema(self.source.schema, self.ids, self.keep_row, runtime)
        fmt, suffix = job.settings.format, OUTPUT_FORMATS[job.settings.format]
        self.output = PartWriter(job.out / f"{part.name}.{suffix}", fmt, meta, schema)
        self.rejects = PartWriter(job.out / f"rejects-{part.index:05d}.{suffix}", fmt, meta, None)
        self.rows_in = self.rows_out = self.rejected = 0
        self.written = 0  # rows whose write finished: a commit queued behind a failed write refuses
        self.committed = False

    def abort(self) -> None:
        self.output.abort()
        self.rejects.abort()


def _write_task(
    runtime: ModelRuntime,
    files: _Files,
    item: tuple[Batch, dict[str, np.ndarray], dict[int, str]],
    emit: Emit,
) -> Callable[[], None]:
    """Run the model on a batch here; what the writer thread does with the result."""
    batch, feeds, reasons = item
    rows = batch.table.num_rows
    outputs, keep = run_model(runtime, feeds, reasons, rows)
    files.rows_in, files.rows_out, files.rejected = (
        files.rows_in + rows,
        files.rows_out + len(keep),
        files.rejected + len(reasons),
    )

    def write() -> None:
        files.output.write(_rows(batch.table, files.ids, keep, batch.start, files.keep_row), outputs)
        if reasons:
            files.rejects.write_rejects(batch.table, files.ids, batch.start, reasons)
        files.written += rows
        emit("rows", rows)  # rows count as done once written

    return write


@dataclass(frozen=True)
class _Commit:
    """A part's end, on the writer thread after its last write: check the counts, rename into place."""

    files: _Files
    emit: Emit

    def __call__(self) -> None:
        f, part = self.files, self.files.part
        if f.written != f.rows_in:
            raise MlopsIacError(f"{part.name}: {f.rows_in - f.written} rows were not written")
        if f.rows_in != f.rows_out + f.rejected or f.rows_in != part.stop - part.start:
            raise MlopsIacError(
                f"{f.source.path} rows {part.start}-{part.stop}: read {f.rows_in} rows, wrote "
                f"{f.rows_out}, rejected {f.rejected}"
            )
        file, digest = f.output.commit()
        rfile, rdigest = f.rejects.commit() if f.rejected else (None, None)
        f.committed = True
        self.emit("part", PartResult(part.index, file, digest, f.rows_in, f.rows_out, f.rejected, rfile, rdigest))


def _rows(table: pa.Table, ids: tuple[str, ...], keep: np.ndarray, start: int, keep_row: bool) -> pa.Table:
    """The id columns of the scored rows (and their row numbers in the file when there is no id)."""
    chosen, rows = table.select(list(ids)), keep.astype(np.int64, copy=False)
    if len(rows) != table.num_rows:
        chosen = chosen.take(to_arrow(rows))
    if keep_row:
        chosen = chosen.append_column("row", to_arrow(rows + start))
    return chosen
