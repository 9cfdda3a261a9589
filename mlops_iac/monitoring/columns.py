"""A drift check's columns: bin counts and a reservoir per baseline column as records stream in,
and each column's result (PSI over the baseline's bins, KS on the reservoirs; see `drift`)."""

from __future__ import annotations

import math
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from .baseline import RESERVOIR, STRING, category_counts, numeric_counts

EPSILON = 1e-4  # keeps PSI finite when a bin is empty on one side
NEW_EXAMPLES = 5  # the most frequent new categories a result names
NEW_TRACKED = 10_000  # distinct new categories counted exactly; beyond, rows are still counted


@dataclass
class Column:
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


def column_of(spec: dict[str, Any]) -> Column:
    if spec.get("dtype") == STRING:
        categories = spec["categories"]
        return Column(
            np.zeros(0),
            np.zeros(len(categories) + 1, dtype=np.int64),
            True,
            index={c: i for i, c in enumerate(categories)},
        )
    categorical = spec.get("kind") == "categorical"
    edges = np.asarray(spec["categories"] if categorical else spec["edges"], dtype=np.float64)
    return Column(edges, np.zeros(len(spec["counts"]), dtype=np.int64), categorical)


def add(column: Column, values: np.ndarray, rng: np.random.Generator) -> None:
    if column.index is not None:
        add_strings(column, values)
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


def add_strings(column: Column, values: np.ndarray) -> None:
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


def result(spec: dict[str, Any], column: Column, threshold: float) -> DriftResult:
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
