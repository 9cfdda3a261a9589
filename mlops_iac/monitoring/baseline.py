"""The drift baseline of a version, made once from the model's sample and the ONNX model's
answers to it (what `drift.py` checks collected data against): per column its dtype, range,
mean, spread, bins or categories with their counts, and a reservoir of values. Pure.
"""

from __future__ import annotations

import random
from collections import Counter
from typing import Any

import numpy as np

BINS = 10
CATEGORIES = 10  # at most this many distinct values (each seen twice on average): categorical
RESERVOIR = 5_000
VERSION = 3  # the newest baseline format this module reads and writes
NUMERIC_VERSION = 2  # what a baseline without string columns is written as, byte for byte as before
STRING = "string"  # the dtype of a string column in a baseline


def _edges(values: np.ndarray) -> list[float]:
    """Inner bin edges near the deciles, each halfway between two distinct values."""
    distinct = np.unique(values)
    if len(distinct) < 2:
        return []
    cuts = np.quantile(values, np.linspace(0, 1, BINS + 1)[1:-1], method="inverted_cdf")
    above = np.unique(np.searchsorted(distinct, cuts, side="left"))
    above = above[above > 0]  # no edge below the smallest value
    return [float(e) for e in (distinct[above - 1] + distinct[above]) / 2]


def numeric_counts(values: np.ndarray, edges: np.ndarray, bins: int) -> np.ndarray:
    return np.bincount(np.searchsorted(edges, values, side="right"), minlength=bins)


def category_counts(values: np.ndarray, categories: np.ndarray) -> np.ndarray:
    """Counts per baseline value; the last bin holds every value the baseline never had."""
    index = np.searchsorted(categories, values, side="left")
    inside = index < len(categories)
    known = inside.copy()
    known[inside] = categories[index[inside]] == values[inside]
    return np.bincount(np.where(known, index, len(categories)), minlength=len(categories) + 1)


def string_baseline(name: str, values: np.ndarray) -> dict[str, Any]:
    """A string column: its categories, sorted, and a count each, plus the "other" bin (0 here)
    that counts, in a check, the values the baseline never had."""
    found = Counter(str(v) for v in np.asarray(values, dtype=object).reshape(-1))
    categories = sorted(found)
    return {
        "name": name,
        "dtype": STRING,
        "kind": "categorical",
        "count": sum(found.values()),
        "categories": categories,
        "counts": [found[c] for c in categories] + [0],
    }


def column_baseline(name: str, values: np.ndarray, rng: random.Random) -> dict[str, Any]:
    """One column in its own dtype; numbers are stored as float64, which holds every value of
    the dtypes models take (float16/32, integers up to 2**53) exactly; strings as categories."""
    dtype = np.asarray(values).dtype
    if dtype.kind in "OUS":
        return string_baseline(name, values)
    values = np.asarray(values).reshape(-1)
    wide = values.astype(np.float64)
    distinct = np.unique(wide)
    sample = wide if len(wide) <= RESERVOIR else np.asarray(rng.sample(list(wide), RESERVOIR))
    column: dict[str, Any] = {
        "name": name,
        "dtype": dtype.name,
        "count": int(wide.size),
        "min": float(wide.min()),
        "max": float(wide.max()),
        "mean": float(wide.mean()),
        "std": float(wide.std()),
        "reservoir": [float(v) for v in sample],
    }
    if len(distinct) <= CATEGORIES and 2 * len(distinct) <= len(wide):
        column.update(
            kind="categorical",
            categories=[float(v) for v in distinct],
            counts=[int(c) for c in category_counts(wide, distinct)],
        )
    else:
        edges = _edges(wide)
        column.update(
            kind="numeric",
            edges=edges,
            counts=[int(c) for c in numeric_counts(wide, np.asarray(edges), len(edges) + 1)],
        )
    return column


def baseline(features: np.ndarray, outputs: dict[str, np.ndarray], input_name: str = "input") -> dict[str, Any]:
    """The baseline of a version: every input column and every numeric output column, each
    in the dtype it has (pass the features in the model's input dtype)."""
    rng = random.Random(0)  # noqa: S311 - sampling, not security; the same data, the same baseline
    columns = [column_baseline(f"{input_name}[{j}]", features[:, j], rng) for j in range(features.shape[1])]
    for name, array in sorted(outputs.items()):
        array = np.asarray(array)
        if array.dtype.kind not in "biuf":
            continue
        flat = array.reshape(len(array), -1)
        columns += [
            column_baseline(f"{name}[{j}]" if flat.shape[1] > 1 else name, flat[:, j], rng)
            for j in range(flat.shape[1])
        ]
    return {"version": NUMERIC_VERSION, "rows": len(features), "columns": columns}


def table_baseline(columns: list[tuple[str, np.ndarray]], rows: int, outputs: dict[str, np.ndarray]) -> dict[str, Any]:
    """The baseline of a table's version: per named column (numbers binned, strings as
    categories), then the outputs; version 3 where a string column is in it."""
    rng = random.Random(0)  # noqa: S311 - sampling, not security; the same data, the same baseline
    base = baseline(np.zeros((rows, 0)), outputs)
    named = [column_baseline(n, v, rng) for n, v in columns]
    base["columns"] = named + base["columns"]
    if any(c["dtype"] == STRING for c in named):
        base["version"] = VERSION
    return base
