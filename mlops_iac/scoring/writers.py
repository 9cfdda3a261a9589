"""One output part on disk: written to a temporary file, renamed into place when complete.

Parquet carries the model's name, version and digest in its key-value metadata and one row
group per batch; nothing in a file depends on the time or on who wrote it, so a part
recomputed after a crash has the same bytes.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import orjson
import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.parquet as pq

from ..errors import MlopsIacError, one_line
from ..serving.protocol import DTYPES
from ..serving.runtime import ModelRuntime, TensorSpec, sha256_of
from .arrow import to_arrow

OUTPUT_FORMATS = {"parquet": "parquet", "csv": "csv", "jsonl": "jsonl"}
METADATA_PREFIX = "mlops-iac."


def output_schema(inputs: pa.Schema, ids: tuple[str, ...], keep_row: bool, runtime: ModelRuntime) -> pa.Schema:
    fields = [inputs.field(i) for i in ids]
    if keep_row:
        fields.append(pa.field("row", pa.int64()))
    return pa.schema(fields + [pa.field(name, _arrow_type(spec)) for name, spec in runtime.outputs.items()])


def _arrow_type(spec: TensorSpec) -> pa.DataType:
    value = pa.string() if spec.datatype == "BYTES" else pa.from_numpy_dtype(DTYPES[spec.datatype])
    if len(spec.shape) <= 1:
        return value
    width = int(np.prod(spec.shape[1:])) if all(d > 0 for d in spec.shape[1:]) else -1
    return pa.list_(value, width) if width > 0 else pa.list_(value)


def _column(values: np.ndarray, kind: pa.DataType | None) -> pa.Array:
    if values.ndim <= 1:
        return to_arrow(values, kind)
    flat = to_arrow(values.reshape(-1), kind.value_type if kind is not None else None)
    width = int(np.prod(values.shape[1:]))
    if kind is not None and pa.types.is_list(kind):
        offsets = to_arrow(np.arange(0, len(flat) + 1, width, dtype=np.int32))
        return pa.ListArray.from_arrays(offsets, flat)
    return pa.FixedSizeListArray.from_arrays(flat, width)


class OutputError(MlopsIacError):
    """A part that could not be written (a full disk, a lost mount), named by its path."""


class PartWriter:
    def __init__(self, path: Path, fmt: str, meta: dict[str, str], schema: pa.Schema | None) -> None:
        self.path, self.fmt, self.schema = path, fmt, schema
        self.meta = {f"{METADATA_PREFIX}{k}": v for k, v in meta.items()}
        self.tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        self.handle: Any = None
        self.writer: Any = None
        self.done = False

    def write(self, ids: pa.Table, outputs: dict[str, np.ndarray]) -> None:
        if not ids.num_rows:
            return
        table = ids
        for name, values in outputs.items():
            kind = self.schema.field(name).type if self.schema is not None and name in self.schema.names else None
            table = table.append_column(name, _column(np.asarray(values), kind))
        if self.schema is None:  # a handler's outputs: the first batch fixes the schema
            self.schema = table.schema
        self._append(table.cast(self.schema))

    def write_rejects(self, table: pa.Table, ids: tuple[str, ...], start: int, reasons: dict[int, str]) -> None:
        rows = np.array(sorted(reasons), dtype=np.int64)
        out = table.select(list(ids)).take(pa.array(rows))
        out = out.append_column("row", pa.array(rows + start)).append_column(
            "reason", pa.array([reasons[int(r)] for r in rows], pa.string())
        )
        if self.schema is None:
            self.schema = out.schema
        self._append(out.cast(self.schema))

    @contextlib.contextmanager
    def _named(self, doing: str) -> Iterator[None]:
        """The disk's errors with the part's path: pyarrow's say "Error writing bytes to file"."""
        try:
            yield
        except OSError as exc:
            raise OutputError(f"{self.path}: cannot {doing}: {one_line(exc)}") from exc

    def _append(self, table: pa.Table) -> None:
        with self._named("write it"):
            self._write(table)

    def _write(self, table: pa.Table) -> None:
        if self.writer is None and self.handle is None:
            self._open(table.schema)
        if self.fmt == "parquet":
            self.writer.write_table(table, row_group_size=max(table.num_rows, 1))
        elif self.fmt == "csv":
            self.writer.write_table(_flat(table))
        else:
            self.handle.write(
                b"".join(orjson.dumps(r, option=orjson.OPT_SERIALIZE_NUMPY) + b"\n" for r in table.to_pylist())
            )

    def _open(self, schema: pa.Schema) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        if self.fmt == "parquet":
            # No dictionary pages: ids and scores are mostly distinct values, where trying a
            # dictionary first cost more time than the whole zstd encoding, for larger files.
            self.writer = pq.ParquetWriter(
                str(self.tmp), schema.with_metadata(self.meta), compression="zstd", use_dictionary=False
            )
        elif self.fmt == "csv":
            self.writer = pacsv.CSVWriter(str(self.tmp), _flat(schema.empty_table()).schema)
        else:
            self.handle = open(self.tmp, "wb")  # noqa: SIM115 - closed by commit() or abort()

    def commit(self) -> tuple[str, str]:
        """Close and rename into place; returns the file's name and digest.

        Not fsynced here: the rename is made durable by the manifest's write in the same
        folder right after, and the bytes before the manifest says "complete"
        (`manifest.make_durable`). Until then a rerun trusts a part only if its digest
        matches, so a part torn by a power cut is scored again, and a SIGKILL loses nothing
        that the page cache holds."""
        with self._named("finish it"):
            if self.handle is None and self.writer is None:  # no row: still a file, so the part is visibly done
                self._open(self.schema if self.schema is not None else pa.schema([]))
            if self.writer is not None:
                self.writer.close()
            if self.handle is not None:
                self.handle.close()
            os.replace(self.tmp, self.path)
            self.done = True
            return self.path.name, sha256_of(self.path)

    def abort(self) -> None:
        if self.done or (self.handle is None and self.writer is None):
            return
        with contextlib.suppress(Exception):
            if self.writer is not None:
                self.writer.close()
            if self.handle is not None:
                self.handle.close()
        with contextlib.suppress(FileNotFoundError):
            self.tmp.unlink()


def _flat(table: pa.Table) -> pa.Table:
    """CSV has no lists: a column of n-wide lists becomes columns name_0 .. name_{n-1}."""
    columns, names = [], []
    for name, column in zip(table.column_names, table.columns, strict=True):
        kind = column.type
        if pa.types.is_fixed_size_list(kind):
            flat = column.combine_chunks().flatten() if column.num_chunks else pa.array([], kind.value_type)
            width = kind.list_size
            for j in range(width):
                columns.append(flat.take(pa.array(np.arange(j, len(flat), width))))
                names.append(f"{name}_{j}")
        else:
            columns.append(column)
            names.append(name)
    return pa.table(columns, names=names)
