"""Drift: the data a model sees in production against the data it was checked on.

The baseline (`baseline.py`) is made once per version, from the model's sample data (in the model's input
dtype) and the ONNX model's answers to it: per feature and per output, its dtype, the range,
mean, spread, a histogram and a reservoir of values. A column with few distinct values
(labels, flags, small counts) keeps a count per value (categorical); any other column keeps
about ten quantile bins whose edges lie halfway between two distinct baseline values, so a
value and its repeats always fall in one bin, and the same data gives a PSI of exactly 0.
A string column (a table's BYTES input) is categorical whatever its number of values: its
categories (sorted) and their counts, dtype "string"; a baseline with string columns is version
3 (version 2 readers knew numbers only), and versions 1 and 2 stay readable.

The check streams the server's collected JSON lines, reads every value in its column's
baseline dtype (the JSON of a float32 3.2 is read back as that float32, not as the float64
3.2), holds only bin counts and a fixed-size reservoir per column whatever the number of
records, and computes per column the population stability index (PSI, over the baseline's
bins) and the two-sample Kolmogorov-Smirnov statistic (scipy, on the reservoirs). Too few
rows, a file with no record of the version, or rows of the wrong width are errors, never a
silent pass. A string column is compared by its categories: PSI over the baseline's categories
plus an "other" bin, and the values the baseline never had counted (distinct values and rows);
KS does not apply to categories without an order, so it is NaN there.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import orjson

from ..errors import MlopsIacError
from .baseline import (
    STRING,
    VERSION,
)
from .columns import DriftResult, add, column_of, result

BATCH = 8_192
# Below about a hundred rows the sampling noise of PSI over ten bins alone (about
# (bins - 1) / rows) nears the usual 0.2 threshold: such a check says nothing either way.
MIN_ROWS = 100
_INDEXED = re.compile(r"^(.*)\[(\d+)\]$")


class CollectedDataError(MlopsIacError):
    """A collected file that cannot be checked, with the file and line that show why."""

    def __init__(self, path: Path, line: int | None, message: str) -> None:
        self.path, self.line = path, line
        super().__init__(f"{path}:{line}: {message}" if line else f"{path}: {message}")


class TooLittleData(MlopsIacError):
    """Fewer collected rows than the check needs: not a pass, not a drift."""

    def __init__(self, rows: int, records: int, minimum: int) -> None:
        self.rows, self.records, self.minimum = rows, records, minimum
        super().__init__(
            f"too little data: {rows} row(s) in {records} record(s) of the version; the check "
            f"needs at least {minimum} (--min-rows)"
        )


# --- the check ------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Tensor:
    """A collected input or output as the baseline knows it: its width and dtype."""

    width: int
    dtype: np.dtype[Any]
    keys: tuple[str, ...]  # the baseline columns, in order


def _tensors(base: dict[str, Any]) -> dict[str, _Tensor]:
    grouped: dict[str, list[tuple[int, dict[str, Any]]]] = {}
    for column in base["columns"]:
        match = _INDEXED.match(column["name"])
        name, j = (match.group(1), int(match.group(2))) if match else (column["name"], 0)
        grouped.setdefault(name, []).append((j, column))
    tensors = {}
    for name, columns in grouped.items():
        columns.sort(key=lambda item: item[0])
        dtype = columns[0][1].get("dtype", "float64")  # version 1 baselines: float64
        tensors[name] = _Tensor(
            columns[-1][0] + 1,
            np.dtype(object if dtype == STRING else "float64" if dtype == "float" else dtype),
            tuple(c["name"] for _, c in columns),
        )
    return tensors


class _Reader:
    """Streams records into per-column counts; one per check."""

    def __init__(self, base: dict[str, Any], model: str | None, version: str | None, seed: int) -> None:
        self.model, self.version = model, version
        self.rng = np.random.default_rng(seed)
        self.tensors = _tensors(base)
        self.columns = {c["name"]: column_of(c) for c in base["columns"]}
        # Per tensor, the rows of a batch as they came (lists of rows) and the values of
        # one-column tensors sent flat; numpy turns each into a table once per batch.
        self.rows: dict[str, list[Any]] = {name: [] for name in self.tensors}
        self.flat: dict[str, list[Any]] = {name: [] for name in self.tensors}
        self.records = 0

    def read(self, path: Path) -> None:
        model, version, rows, flat = self.model, self.version, self.rows, self.flat
        parsed, mine, other, cut = 0, 0, None, None
        first = 1
        lineno = 0
        with open(path, "rb") as handle:
            for lineno, line in enumerate(handle, 1):
                if cut is not None:
                    raise CollectedDataError(path, cut, "not a JSON object (a cut line is only allowed last)")
                try:
                    record = orjson.loads(line)
                except orjson.JSONDecodeError:
                    if line.strip():
                        cut = lineno  # a line cut by a crash, if it is the last
                    continue
                parsed += 1
                if type(record) is not dict:
                    raise CollectedDataError(path, lineno, f"a {type(record).__name__}, not a record (a JSON object)")
                if model is not None and (
                    record.get("model") != model
                    or (version is not None and str(record.get("version", version)) != version)
                ):
                    other = other or (lineno, record.get("model"), record.get("version"))
                    continue
                mine += 1
                for part in (record.get("inputs"), record.get("outputs")):
                    if not part:
                        continue
                    for name, data in part.items():
                        into = rows.get(name)
                        if into is None:
                            continue  # not in the baseline (a second input, a string output)
                        if type(data) is not list:
                            raise CollectedDataError(path, lineno, f"{name!r} is not a list of rows")
                        if data:
                            if type(data[0]) is list:
                                into.extend(data)
                            else:
                                flat[name].extend(data)
                if mine % BATCH == 0:  # numpy on batches: the per-record cost stays in JSON parsing
                    self.flush(path, first, lineno)
                    first = lineno + 1
        self.flush(path, first, lineno)
        self.records += mine
        if parsed == 0:
            raise CollectedDataError(path, cut, "empty: no collected records")
        if mine == 0 and other is not None:
            wanted = f"{model}@{version}" if version is not None else f"{model}"
            found = other[1] if other[2] is None else f"{other[1]}@{other[2]}"
            raise CollectedDataError(
                path, other[0], f"a record of {found}; no record in this file is of {wanted}, the version checked"
            )

    def flush(self, path: Path, first: int, last: int) -> None:
        for name, tensor in self.tensors.items():
            for pending, shaped in ((self.rows[name], True), (self.flat[name], False)):
                if not pending:
                    continue
                table = _table(pending if shaped else [pending], tensor, flat=not shaped)
                if table is None:
                    _locate(path, first, last, self, name)
                    raise CollectedDataError(path, None, f"{name!r} has rows that do not fit the baseline")
                for j, key in enumerate(tensor.keys):
                    add(self.columns[key], table[:, j], self.rng)
                pending.clear()


def _table(rows: list[Any], tensor: _Tensor, *, flat: bool = False) -> np.ndarray | None:
    """The rows in the baseline's dtype, widened to float64 for binning; None when they are
    not all `width` numbers. `flat`: one row of values of a one-column tensor. A string tensor's
    table holds Python str (None when a value is not a string)."""
    if tensor.dtype.kind == "O":
        return _strings(rows, tensor, flat)
    try:
        table = np.asarray(rows, dtype=tensor.dtype)
    except (ValueError, TypeError, OverflowError):
        return None
    if flat:
        if tensor.width != 1 or table.ndim != 2:
            return None
        table = table.reshape(-1, 1)
    if table.ndim != 2 or table.shape[1] != tensor.width:
        return None
    return table.astype(np.float64, copy=False)


def _strings(rows: list[Any], tensor: _Tensor, flat: bool) -> np.ndarray | None:
    if flat:
        values = rows[0]
        if tensor.width != 1 or any(type(v) is not str for v in values):
            return None
        table = np.empty((len(values), 1), dtype=object)
        table[:, 0] = values
        return table
    if any(type(r) is not list or len(r) != tensor.width for r in rows):
        return None
    table = np.empty((len(rows), tensor.width), dtype=object)
    try:
        table[:] = rows
    except ValueError:  # rows nested deeper than a table
        return None
    return table if all(type(v) is str for v in table.flat) else None


def _locate(path: Path, first: int, last: int, reader: _Reader, name: str) -> None:
    """Find the record of a failed batch that does not fit, reading its lines again."""
    tensor = reader.tensors[name]
    with open(path, "rb") as handle:
        for lineno, line in enumerate(handle, 1):
            if lineno < first:
                continue
            if lineno > last:
                return
            try:
                record = orjson.loads(line)
            except orjson.JSONDecodeError:
                continue
            if (
                type(record) is not dict
                or (reader.model is not None and record.get("model") != reader.model)
                or (reader.version is not None and str(record.get("version", reader.version)) != reader.version)
            ):
                continue
            for section in ("inputs", "outputs"):
                data = (record.get(section) or {}).get(name)
                if not data:
                    continue
                rows = data if type(data[0]) is list else [[v] for v in data]
                if _table(rows, tensor) is None:
                    widths = sorted({len(r) if type(r) is list else 1 for r in rows})
                    raise CollectedDataError(
                        path,
                        lineno,
                        f"{section} {name!r}: rows of {widths} value(s); the "
                        f"baseline has {tensor.width} {tensor.dtype.name} value(s) per row"
                        if widths != [tensor.width]
                        else f"{section} {name!r}: values that are not "
                        + ("strings" if tensor.dtype.kind == "O" else f"{tensor.dtype.name} numbers"),
                    )


def check(
    base: dict[str, Any],
    collected: Iterable[Path],
    threshold: float,
    *,
    model: str | None = None,
    version: str | int | None = None,
    min_rows: int = MIN_ROWS,
    seed: int = 0,
) -> tuple[list[DriftResult], int]:
    """PSI and KS per baseline column over the collected records of `model` (and `version`;
    both: any); (results, records read). Raises CollectedDataError, TooLittleData."""
    if base.get("version", 1) > VERSION:
        raise MlopsIacError(
            f"the baseline is of format version {base['version']}; this mlops-iac reads versions "
            f"1 to {VERSION}: upgrade mlops-iac, or `mlops-iac convert` the version again"
        )
    reader = _Reader(base, model, None if version is None else str(version), seed)
    for path in collected:
        reader.read(path)
    rows = max((c.seen for c in reader.columns.values()), default=0)
    if rows < max(min_rows, 1):
        raise TooLittleData(rows, reader.records, max(min_rows, 1))
    results = [result(spec, reader.columns[spec["name"]], threshold) for spec in base["columns"]]
    return results, reader.records
