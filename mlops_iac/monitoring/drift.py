"""Drift: the data a model sees in production against the data it was checked on.

The baseline is made once per version, from the model's sample data and the ONNX model's
answers to it: per feature and per output, the range, mean, spread, a histogram over
quantile bins, and a reservoir of values. The check streams the server's collected JSON
lines, holding only bin counts and a fixed-size reservoir per column whatever the number of
records, and computes per column the population stability index (PSI, over the baseline's
bins) and the two-sample Kolmogorov-Smirnov statistic (scipy, on the reservoirs).
"""

from __future__ import annotations

import math
import random
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import orjson

BINS = 10
RESERVOIR = 5_000
BATCH = 8_192
EPSILON = 1e-4  # keeps PSI finite when a bin is empty on one side


def _edges(values: np.ndarray) -> list[float]:
    """Inner bin edges at the deciles: every baseline bin holds about a tenth of the data."""
    edges = np.unique(np.quantile(values, np.linspace(0, 1, BINS + 1)[1:-1]))
    return [float(e) for e in edges]


def _counts(values: np.ndarray, edges: list[float]) -> list[int]:
    counts = np.bincount(np.searchsorted(np.asarray(edges), values, side="right"), minlength=len(edges) + 1)
    return [int(c) for c in counts]


def column_baseline(name: str, values: np.ndarray, rng: random.Random) -> dict[str, Any]:
    values = np.asarray(values, dtype=np.float64).reshape(-1)
    edges = _edges(values)
    sample = values if len(values) <= RESERVOIR else np.asarray(rng.sample(list(values), RESERVOIR))
    return {"name": name, "dtype": "float", "count": int(values.size), "min": float(values.min()),
            "max": float(values.max()), "mean": float(values.mean()), "std": float(values.std()),
            "edges": edges, "counts": _counts(values, edges), "reservoir": [float(v) for v in sample]}


def baseline(features: np.ndarray, outputs: dict[str, np.ndarray], input_name: str = "input") -> dict[str, Any]:
    """The baseline of a version: every input column and every numeric output column."""
    rng = random.Random(0)  # noqa: S311 - sampling, not security; the same data, the same baseline
    columns = [column_baseline(f"{input_name}[{j}]", features[:, j], rng) for j in range(features.shape[1])]
    for name, array in sorted(outputs.items()):
        array = np.asarray(array)
        if array.dtype.kind not in "biuf":
            continue
        flat = array.reshape(len(array), -1)
        columns += [column_baseline(f"{name}[{j}]" if flat.shape[1] > 1 else name, flat[:, j], rng)
                    for j in range(flat.shape[1])]
    return {"version": 1, "rows": len(features), "columns": columns}


@dataclass
class _Column:
    edges: np.ndarray
    counts: np.ndarray
    reservoir: list[float] = field(default_factory=list)
    seen: int = 0


@dataclass
class DriftResult:
    name: str
    psi: float
    ks: float
    ks_pvalue: float
    count: int
    drifted: bool


def _records(paths: Iterable[Path]) -> Iterator[dict[str, Any]]:
    for path in paths:
        with open(path, "rb") as handle:
            for line in handle:
                if line.strip():
                    try:
                        yield orjson.loads(line)
                    except orjson.JSONDecodeError:
                        continue  # a line cut by a crash: skip it, never fail the check




def check(base: dict[str, Any], collected: Iterable[Path], threshold: float, *, seed: int = 0) -> tuple[
        list[DriftResult], int]:
    """PSI and KS per baseline column over the collected records; (results, records read)."""
    rng = np.random.default_rng(seed)
    columns = {c["name"]: _Column(np.asarray(c["edges"]), np.zeros(len(c["edges"]) + 1, dtype=np.int64))
               for c in base["columns"]}
    pending: dict[str, list[Any]] = {}
    records = 0
    for record in _records(collected):
        records += 1
        for section in ("inputs", "outputs"):
            for name, data in (record.get(section) or {}).items():
                if isinstance(data, list) and data:  # rows as they came; numpy sees them per batch
                    pending.setdefault(name, []).extend(data if isinstance(data[0], list) else [[v] for v in data])
        if records % BATCH == 0:  # numpy on batches: the per-record cost stays in JSON parsing
            _flush(columns, pending, rng)
    _flush(columns, pending, rng)
    results = []
    for spec in base["columns"]:
        column = columns[spec["name"]]
        results.append(_result(spec, column, threshold))
    return results, records


def _flush(columns: dict[str, _Column], pending: dict[str, list[Any]], rng: np.random.Generator) -> None:
    for name, rows in pending.items():
        for table in _tables(rows):
            for j in range(table.shape[1]):
                key = f"{name}[{j}]" if f"{name}[{j}]" in columns else name
                if key in columns:
                    _add(columns[key], table[:, j], rng)
    pending.clear()


def _tables(rows: list[Any]) -> Iterator[np.ndarray]:
    """The rows as 2-D float arrays: one when they agree in width, one per width when not;
    rows that are not numbers (a bad record) are left out rather than failing the check."""
    try:
        table = np.asarray(rows, dtype=np.float64)
        if table.ndim == 2:
            yield table
            return
    except (ValueError, TypeError):
        pass
    by_width: dict[int, list[Any]] = {}
    for row in rows:
        if isinstance(row, list):
            by_width.setdefault(len(row), []).append(row)
    for group in by_width.values():
        try:
            table = np.asarray(group, dtype=np.float64)
        except (ValueError, TypeError):
            continue
        if table.ndim == 2:
            yield table


def _add(column: _Column, values: np.ndarray, rng: np.random.Generator) -> None:
    column.counts += np.bincount(np.searchsorted(column.edges, values, side="right"), minlength=len(column.counts))
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


def psi(expected: np.ndarray, actual: np.ndarray) -> float:
    e = np.maximum(expected / max(expected.sum(), 1), EPSILON)
    a = np.maximum(actual / max(actual.sum(), 1), EPSILON)
    return float(np.sum((a - e) * np.log(a / e)))


def _result(spec: dict[str, Any], column: _Column, threshold: float) -> DriftResult:
    from scipy.stats import ks_2samp

    if column.seen == 0:
        return DriftResult(spec["name"], math.nan, math.nan, math.nan, 0, False)
    value = psi(np.asarray(spec["counts"], dtype=np.float64), column.counts.astype(np.float64))
    ks = ks_2samp(np.asarray(spec["reservoir"]), np.asarray(column.reservoir))
    return DriftResult(spec["name"], round(value, 6), round(float(ks.statistic), 6), float(ks.pvalue),
                       column.seen, value > threshold)
