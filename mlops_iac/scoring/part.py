"""One part of a run: its rows read in batches, through the model, into its output files.

The model runs through the server's own code (`ModelRuntime`: the digest check, the handler,
the input check), so a batch is scored exactly as the same rows sent to `serve` would be.
"""

from __future__ import annotations

from collections.abc import Iterator
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
        _RUNTIMES[key] = ModelRuntime(model, base)
    return _RUNTIMES[key]


def score_part(job: Job, part: Part, progress: Progress | None = None) -> PartResult:
    """Score one part and write its files atomically; the same part always gives the same bytes."""
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
