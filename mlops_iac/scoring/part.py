"""One part of a run: its rows read in batches, through the model, into its output files.

The model runs through the server's own code (`ModelRuntime`: the digest check, the handler,
the input check), so a batch is scored exactly as the same rows sent to `serve` would be.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa

from ..errors import MlopsIacError
from ..serving.config import ModelConfig
from ..serving.runtime import ModelRuntime
from .features import InputMap, arrays
from .handler import run_model
from .jobs import Job, Part, PartResult, Progress
from .sources import Batch, batches, prefetch
from .writers import OUTPUT_FORMATS, PartWriter, output_schema

_RUNTIMES: dict[tuple[str, str], ModelRuntime] = {}


def runtime_of(model: ModelConfig, base: Path) -> ModelRuntime:
    key = (str(base), model.model_dump_json())  # the file, digest, handler and threads
    if key not in _RUNTIMES:  # one session per process, reused by every part
        # No spinning: onnxruntime's pool threads would otherwise busy-wait between calls,
        # taking the cores from the threads that read and write the batches around each
        # call, from the other workers, and from a pod's CPU quota.
        _RUNTIMES[key] = ModelRuntime(model, base, spinning=False)
    return _RUNTIMES[key]


def score_part(
    job: Job, part: Part, progress: Progress | None = None, stop: threading.Event | None = None
) -> PartResult:
    """Score one part and write its files atomically; the same part always gives the same bytes.
    `stop`, set by another thread, abandons the part at the next batch (nothing committed)."""
    runtime = runtime_of(job.model, job.base)
    source, maps, ids = job.sources[part.input], job.maps[part.input], job.ids[part.input]
    columns = list(dict.fromkeys([*ids, *(c for m in maps for c in m.columns)]))
    meta = {"model": job.model.name, "version": str(job.model.version), "digest": job.model.digest or ""}
    keep_row = not ids
    base_schema = output_schema(source.schema, ids, keep_row, runtime) if runtime.postprocess is None else None
    output = PartWriter(job.out / f"{part.name}.{_suffix(job)}", job.settings.format, meta, base_schema)
    rejects = PartWriter(job.out / f"rejects-{part.index:05d}.{_suffix(job)}", job.settings.format, meta, None)
    rows_in = rows_out = rejected = 0
    try:
        # Write-behind: batch i is encoded and written on its own thread (Arrow's encoder
        # releases the GIL) while onnxruntime scores batch i+1. One write in flight at most,
        # so memory holds one more batch; leaving the block waits for the last write.
        with ThreadPoolExecutor(1, thread_name_prefix="mlops-iac-write") as writes:
            pending: Future[None] | None = None
            read = batches(source, part.start, part.stop, job.settings.batch_size, columns, ids)
            for batch, feeds, reasons in prefetch(_converted(read, list(maps))):
                if stop is not None and stop.is_set():
                    raise MlopsIacError(f"{part.name}: stopped before it was complete")
                outputs, keep = run_model(runtime, feeds, reasons, batch.table.num_rows)
                if pending is not None:
                    pending.result()  # a failed write stops the part here
                written = _Written(batch, keep, outputs, reasons)
                pending = writes.submit(_write, output, rejects, written, ids, keep_row, progress)
                n = batch.table.num_rows
                rows_in, rows_out, rejected = rows_in + n, rows_out + len(keep), rejected + len(reasons)
            if pending is not None:
                pending.result()
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


@dataclass(frozen=True)
class _Written:
    """One scored batch on its way to the part's files."""

    batch: Batch
    keep: np.ndarray
    outputs: dict[str, np.ndarray]
    reasons: dict[int, str]


def _write(
    output: PartWriter,
    rejects: PartWriter,
    w: _Written,
    ids: tuple[str, ...],
    keep_row: bool,
    progress: Progress | None,
) -> None:
    output.write(_rows(w.batch.table, ids, w.keep, w.batch.start, keep_row), w.outputs)
    if w.reasons:
        rejects.write_rejects(w.batch.table, ids, w.batch.start, w.reasons)
    if progress is not None:  # rows count as done once written
        progress(w.batch.table.num_rows)


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
