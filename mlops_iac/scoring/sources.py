"""The inputs of a batch scoring run: which files, their format, schema and row count, and
their rows in batches of an exact size.

Batches have exactly `batch_size` rows (the last of a range may be shorter) whatever the
reader's own chunking, so that part boundaries, and so the output bytes, depend only on the
data and the settings. Every reader streams: memory is bounded by the batch, not the file.
"""

from __future__ import annotations

import contextlib
import glob
import os
import queue
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import numpy as np
import orjson
import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.parquet as pq

from ..errors import MlopsIacError, one_line

T = TypeVar("T")

FORMATS = {
    ".parquet": "parquet",
    ".pq": "parquet",
    ".csv": "csv",
    ".npy": "npy",
    ".jsonl": "jsonl",
    ".ndjson": "jsonl",
    ".json": "jsonl",
}
NPY_COLUMN = "features"  # a .npy array of shape [rows, n] reads as one column of n-wide lists
_BLOCK = 1 << 20


class InputError(MlopsIacError):
    """An input file that cannot be read where a part needs it."""


@dataclass(frozen=True)
class Source:
    path: Path
    format: str
    rows: int
    schema: pa.Schema
    size: int
    mtime_ns: int


@dataclass
class Batch:
    """Rows `start` .. `start + len(table)` of one file; `errors` maps a row offset to why it
    could not be read at all (a line that is not JSON)."""

    table: pa.Table
    start: int
    errors: dict[int, str] = field(default_factory=dict)


def expand(patterns: tuple[str, ...] | list[str]) -> list[Path]:
    """Paths and globs into files, in a stable order; a pattern that matches nothing is an error."""
    out: list[Path] = []
    for pattern in patterns:
        if glob.has_magic(pattern):
            found = sorted(Path(p) for p in glob.glob(pattern, recursive=True) if Path(p).is_file())
            if not found:
                raise MlopsIacError(f"--input {pattern}: no file matches")
        elif Path(pattern).is_file():
            found = [Path(pattern)]
        else:
            raise MlopsIacError(f"--input {pattern}: no such file")
        out += [p for p in found if p not in out]
    return out


def format_of(path: Path) -> str:
    fmt = FORMATS.get(path.suffix.lower())
    if fmt is None:
        raise MlopsIacError(
            f"{path}: unknown input format {path.suffix!r}; expected one of: " + ", ".join(sorted(FORMATS))
        )
    return fmt


def open_source(path: Path) -> Source:
    fmt = format_of(path)
    stat = path.stat()
    try:
        schema, rows = _SCHEMA[fmt](path)
    except (pa.ArrowInvalid, ValueError, OSError) as exc:
        raise MlopsIacError(f"{path}: cannot read it as {fmt}: {one_line(exc)}") from None
    return Source(path, fmt, rows, schema, stat.st_size, stat.st_mtime_ns)


def _parquet_file(path: Path) -> pq.ParquetFile:
    """Pages that carry a CRC are verified: a flipped bit would otherwise score as another
    value (pyarrow does not verify by default). Pages without one are read as before."""
    return pq.ParquetFile(path, page_checksum_verification=True)


def _parquet_schema(path: Path) -> tuple[pa.Schema, int]:
    meta = _parquet_file(path).metadata
    return meta.schema.to_arrow_schema(), meta.num_rows


def _npy_header(path: Path) -> tuple[tuple[int, ...], np.dtype[Any]]:
    array = np.load(path, mmap_mode="r")  # reads the header only
    return tuple(array.shape), array.dtype


def _npy_schema(path: Path) -> tuple[pa.Schema, int]:
    shape, dtype = _npy_header(path)
    if len(shape) not in (1, 2) or dtype.hasobject:
        raise ValueError(f"expected a numeric array of shape [rows] or [rows, features]; got {dtype} {list(shape)}")
    value = pa.from_numpy_dtype(dtype)
    return pa.schema([(NPY_COLUMN, value if len(shape) == 1 else pa.list_(value, shape[1]))]), shape[0]


def _csv_schema(path: Path) -> tuple[pa.Schema, int]:
    schema = _csv_reader(path, None, {}).schema  # types inferred from the first block
    reader = _csv_reader(path, schema.names[:1], {schema.names[0]: pa.string()})
    return schema, sum(b.num_rows for b in reader)


def _csv_reader(path: Path, include: list[str] | None, types: dict[str, pa.DataType]) -> pacsv.CSVStreamingReader:
    convert = pacsv.ConvertOptions(column_types=types, include_columns=include, strings_can_be_null=True)
    return pacsv.open_csv(path, read_options=pacsv.ReadOptions(block_size=_BLOCK), convert_options=convert)


def _jsonl_schema(path: Path) -> tuple[pa.Schema, int]:
    names: dict[str, None] = {}
    first: list[dict[str, Any]] = []
    rows = 0
    for _, line in _lines(path):
        if rows < 1000:  # the columns and their types are those of the first rows
            try:
                record = orjson.loads(line)
            except orjson.JSONDecodeError:
                record = None
            if isinstance(record, dict):
                names.update(dict.fromkeys(record))
                first.append(record)
        rows += 1
    return _json_table(first, list(names), {}, 0).table.schema, rows


def _lines(path: Path) -> Iterator[tuple[int, bytes]]:
    """Non-blank lines with their line numbers (1-based)."""
    with open(path, "rb") as handle:
        for number, line in enumerate(handle, 1):
            if line.strip():
                yield number, line


_SCHEMA = {"parquet": _parquet_schema, "npy": _npy_schema, "csv": _csv_schema, "jsonl": _jsonl_schema}


def batches(
    source: Source, start: int, stop: int, size: int, columns: list[str], ids: tuple[str, ...] = ()
) -> Iterator[Batch]:
    """Rows [start, stop) of `source`, `size` rows at a time, only the named columns.

    CSV features stay text until they are cast, so that one bad cell rejects its row, not the
    file; CSV id columns keep the types inferred from the first block. A file that cannot be
    read (a page that fails its checksum, corrupt compressed data, a disk error) is an
    `InputError` naming it: the readers' own messages do not."""
    try:
        yield from _batches(source, start, stop, size, columns, ids)
    except (OSError, pa.ArrowException, ValueError) as exc:
        raise InputError(f"{source.path}: cannot read rows {start}-{stop} as {source.format}: {one_line(exc)}") from exc


def _batches(
    source: Source, start: int, stop: int, size: int, columns: list[str], ids: tuple[str, ...]
) -> Iterator[Batch]:
    if stop <= start:
        return
    if source.format == "npy":
        yield from _npy_batches(source, start, stop, size)
        return
    if source.format == "jsonl":
        yield from _jsonl_batches(source, start, stop, size, columns)
        return
    pending: list[pa.Table] = []
    held, position = 0, start
    for chunk in _chunks(source, start, stop, columns, ids):
        if position + held + chunk.num_rows > stop:
            chunk = chunk.slice(0, stop - position - held)
        pending.append(chunk)
        held += chunk.num_rows
        while held >= size:
            table = pa.concat_tables(pending)
            yield Batch(table.slice(0, size).combine_chunks(), position)
            rest = table.slice(size)
            pending, held, position = [rest], rest.num_rows, position + size
        if position + held >= stop:
            break
    if held:
        yield Batch(pa.concat_tables(pending).combine_chunks(), position)


def _chunks(source: Source, start: int, stop: int, columns: list[str], ids: tuple[str, ...]) -> Iterator[pa.Table]:
    """Tables from row `start` on (to `stop` at least), in whatever sizes the reader gives."""
    skip = start
    if source.format == "parquet":
        # Only the row groups that hold [start, stop): the reader buffers what it is asked
        # for, so asking for the rest of the file would make memory grow with the file.
        handle = _parquet_file(source.path)
        groups, first = [], 0
        for i in range(handle.num_row_groups):
            rows = handle.metadata.row_group(i).num_rows
            if first + rows <= start:
                skip -= rows  # whole row groups before the start are never read
            elif first < stop:
                groups.append(i)
            first += rows
        readers: Iterator[pa.RecordBatch] = handle.iter_batches(65536, groups, columns) if groups else iter(())
    else:
        types = {c: source.schema.field(c).type if c in ids else pa.string() for c in columns}
        readers = iter(_csv_reader(source.path, columns, types))
    for record in readers:
        table = pa.Table.from_batches([record])
        if skip >= table.num_rows:
            skip -= table.num_rows
            continue
        yield table.slice(skip)
        skip = 0


def _npy_batches(source: Source, start: int, stop: int, size: int) -> Iterator[Batch]:
    array = np.load(source.path, mmap_mode="r")  # pages in only the rows read
    for first in range(start, stop, size):
        block = np.ascontiguousarray(array[first : min(first + size, stop)])
        if block.ndim == 1:
            column: pa.Array = pa.array(block)
        else:
            column = pa.FixedSizeListArray.from_arrays(pa.array(block.reshape(-1)), block.shape[1])
        yield Batch(pa.table({NPY_COLUMN: column}), first)


def _jsonl_batches(source: Source, start: int, stop: int, size: int, columns: list[str]) -> Iterator[Batch]:
    records: list[dict[str, Any]] = []
    errors: dict[int, str] = {}
    row, position = -1, start
    for number, line in _lines(source.path):
        row += 1
        if row < start:
            continue
        if row >= stop:
            break
        try:
            record = orjson.loads(line)
        except orjson.JSONDecodeError as exc:
            record, errors[len(records)] = {}, f"line {number}: not JSON ({exc})"
        if not isinstance(record, dict):
            record, errors[len(records)] = {}, f"line {number}: not a JSON object"
        records.append(record)
        if len(records) == size:
            yield _json_table(records, columns, errors, position)
            records, errors, position = [], {}, position + size
    if records:
        yield _json_table(records, columns, errors, position)


def _json_table(records: list[dict[str, Any]], columns: list[str], errors: dict[int, str], position: int) -> Batch:
    arrays = {}
    for name in columns:
        values = [r.get(name) for r in records]
        try:
            arrays[name] = pa.array(values)
        except (pa.ArrowInvalid, pa.ArrowTypeError):
            arrays[name] = _json_column(name, values, errors)
    return Batch(pa.table(arrays), position, errors)


def _json_column(name: str, values: list[Any], errors: dict[int, str]) -> pa.Array:
    """A column of mixed JSON types: the rows whose type differs from the first value's (any
    number counts as a number) are bad rows, with the reason; the rest make one typed column."""
    first = next((v for v in values if v is not None), None)
    numeric = isinstance(first, int | float) and not isinstance(first, bool)
    kind = type(first)
    clean = []
    for i, value in enumerate(values):
        ok = (
            value is None or (isinstance(value, int | float) and not isinstance(value, bool))
            if numeric
            else isinstance(value, kind)
        )
        if not ok:
            errors.setdefault(i, f"column {name!r}: got {type(value).__name__} {str(value)[:40]!r}")
        clean.append(value if ok else None)
    try:
        return pa.array(clean)
    except (pa.ArrowInvalid, pa.ArrowTypeError):
        for i, value in enumerate(clean):
            if value is not None:
                errors.setdefault(i, f"column {name!r}: cannot read {str(value)[:40]!r}")
        return pa.nulls(len(values))


def fingerprint(source: Source) -> dict[str, Any]:
    """What identifies an input for resuming: a changed file must not resume an old run."""
    return {
        "path": os.fspath(source.path),
        "format": source.format,
        "rows": source.rows,
        "size": source.size,
        "mtime_ns": source.mtime_ns,
    }


def prefetch(items: Iterator[T], depth: int = 2) -> Iterator[T]:
    """`items`, produced by a thread up to `depth` ahead: the next batch is read and converted
    (Arrow releases the GIL) while onnxruntime runs this one. Order is kept; errors surface."""
    slots: queue.Queue[tuple[bool, Any]] = queue.Queue(depth)
    stop = threading.Event()

    def produce() -> None:
        try:
            for item in items:
                if stop.is_set():
                    return
                slots.put((True, item))
            slots.put((False, None))
        except BaseException as exc:  # handed to the consumer, raised there
            slots.put((False, exc))

    thread = threading.Thread(target=produce, daemon=True, name="mlops-iac-prefetch")
    thread.start()
    try:
        while True:
            ok, item = slots.get()
            if not ok:
                if item is not None:
                    raise item
                return
            yield item
    finally:
        stop.set()
        while thread.is_alive():  # unblock a producer waiting on a full queue
            with contextlib.suppress(queue.Empty):
                slots.get(timeout=0.05)
