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

import math
import re
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import orjson

from ..errors import MlopsIacError
from .baseline import (
    RESERVOIR,
    STRING,
    VERSION,
    category_counts,
    numeric_counts,
)

BATCH = 8_192
EPSILON = 1e-4  # keeps PSI finite when a bin is empty on one side
# Below about a hundred rows the sampling noise of PSI over ten bins alone (about
# (bins - 1) / rows) nears the usual 0.2 threshold: such a check says nothing either way.
MIN_ROWS = 100
NEW_EXAMPLES = 5  # the most frequent new categories a result names
NEW_TRACKED = 10_000  # distinct new categories counted exactly; beyond, rows are still counted
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


@dataclass
class _Column:
    edges: np.ndarray  # numeric: inner edges; categorical: the baseline's values
    counts: np.ndarray
    categorical: bool
    reservoir: list[float] = field(default_factory=list)
    seen: int = 0
    # A string column: the index of each baseline category, and the rows per new category.
    index: dict[str, int] | None = None
    new: Counter[str] = field(default_factory=Counter)
    new_rows: int = 0


@dataclass
class DriftResult:
    name: str
    psi: float
    ks: float
    ks_pvalue: float
    count: int
    drifted: bool
    kind: str = "numeric"
    new_categories: int = 0  # a string column: distinct values the baseline never had
    new_rows: int = 0  # ... and the rows that had one
    new_examples: list[str] = field(default_factory=list)  # the most frequent of them


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
        self.columns = {c["name"]: _column(c) for c in base["columns"]}
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
                    _add(self.columns[key], table[:, j], self.rng)
                pending.clear()


def _column(spec: dict[str, Any]) -> _Column:
    if spec.get("dtype") == STRING:
        categories = spec["categories"]
        return _Column(
            np.zeros(0),
            np.zeros(len(categories) + 1, dtype=np.int64),
            True,
            index={c: i for i, c in enumerate(categories)},
        )
    categorical = spec.get("kind") == "categorical"
    edges = np.asarray(spec["categories"] if categorical else spec["edges"], dtype=np.float64)
    return _Column(edges, np.zeros(len(spec["counts"]), dtype=np.int64), categorical)


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
    results = [_result(spec, reader.columns[spec["name"]], threshold) for spec in base["columns"]]
    return results, reader.records


def _add(column: _Column, values: np.ndarray, rng: np.random.Generator) -> None:
    if column.index is not None:
        _add_strings(column, values)
        return
    if values.dtype.kind == "f":  # a missing number (NaN) has no bin; baselines leave them out too
        values = values[~np.isnan(values)]
    if column.categorical:
        column.counts += category_counts(values, column.edges)
    else:
        column.counts += numeric_counts(values, column.edges, len(column.counts))
    # Reservoir sampling (algorithm R), vectorised: value number i (1-based over the whole
    # stream) takes a random slot below i, and is kept if that slot is inside the reservoir.
    room = max(0, RESERVOIR - len(column.reservoir))
    column.reservoir.extend(float(v) for v in values[:room])
    rest = values[room:]
    start = column.seen + min(room, len(values))
    column.seen += len(values)
    if len(rest):
        slots = (rng.random(len(rest)) * np.arange(start + 1, start + len(rest) + 1)).astype(np.int64)
        keep = slots < RESERVOIR
        reservoir = np.asarray(column.reservoir)
        reservoir[slots[keep]] = rest[keep]  # later values win a shared slot, as in the stream
        column.reservoir = reservoir.tolist()


def _add_strings(column: _Column, values: np.ndarray) -> None:
    """Counts per baseline category, the rest in the "other" bin and per new value."""
    assert column.index is not None
    other = len(column.counts) - 1
    for value, count in Counter(values.tolist()).items():
        at = column.index.get(value)
        if at is not None:
            column.counts[at] += count
            continue
        column.counts[other] += count
        column.new_rows += count
        if value in column.new or len(column.new) < NEW_TRACKED:
            column.new[value] += count
    column.seen += len(values)


def psi(expected: np.ndarray, actual: np.ndarray) -> float:
    e = np.maximum(expected / max(expected.sum(), 1), EPSILON)
    a = np.maximum(actual / max(actual.sum(), 1), EPSILON)
    return float(np.sum((a - e) * np.log(a / e)))


def _result(spec: dict[str, Any], column: _Column, threshold: float) -> DriftResult:
    from scipy.stats import ks_2samp

    kind = STRING if column.index is not None else "categorical" if column.categorical else "numeric"
    if column.seen == 0:
        return DriftResult(spec["name"], math.nan, math.nan, math.nan, 0, False, kind)
    value = psi(np.asarray(spec["counts"], dtype=np.float64), column.counts.astype(np.float64))
    if column.index is not None:  # categories without an order: no KS
        return DriftResult(
            spec["name"],
            round(value, 6),
            math.nan,
            math.nan,
            column.seen,
            value > threshold,
            kind,
            len(column.new),
            column.new_rows,
            [v for v, _ in column.new.most_common(NEW_EXAMPLES)],
        )
    ks = ks_2samp(np.asarray(spec["reservoir"]), np.asarray(column.reservoir))
    return DriftResult(
        spec["name"],
        round(value, 6),
        round(float(ks.statistic), 6),
        float(ks.pvalue),
        column.seen,
        value > threshold,
        kind,
    )
