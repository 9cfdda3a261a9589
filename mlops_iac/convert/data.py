"""Reading sample and labelled data: .npy, .npz, .csv and .parquet, into float32 arrays."""

from __future__ import annotations

import contextlib
import csv
from pathlib import Path

import numpy as np

from ..errors import MlopsIacError


class DataError(MlopsIacError):
    """A data file could not be read as the tool needs it."""


def read_features(path: Path, label: str | None = None) -> np.ndarray:
    """The feature matrix (float32, 2-D) of a sample file; `label` names a column to leave out."""
    return read_labelled(path, label, need_labels=False)[0]


def read_labelled(path: Path, label: str | None = "label", *,
                  need_labels: bool = True) -> tuple[np.ndarray, np.ndarray | None]:
    """(features, labels) from .npz (arrays X and y), .csv or .parquet (a label column)."""
    if not path.exists():
        raise DataError(f"{path} does not exist")
    suffix = path.suffix.lower()
    try:
        if suffix == ".npy":
            features, labels = np.load(path, allow_pickle=False), None
        elif suffix == ".npz":
            features, labels = _npz(path)
        elif suffix == ".csv":
            features, labels = _columns(*_read_csv(path), label)
        elif suffix == ".parquet":
            features, labels = _columns(*_read_parquet(path), label)
        else:
            raise DataError(f"{path}: unsupported data file; expected .npy, .npz, .csv or .parquet")
    except (ValueError, OSError) as exc:
        raise DataError(f"{path}: cannot read data: {exc}") from None
    features = np.asarray(features)
    if features.ndim == 1:
        features = features.reshape(1, -1)
    if features.ndim != 2 or features.shape[0] == 0:
        raise DataError(f"{path}: expected a non-empty 2-D table of features, got shape {features.shape}")
    if need_labels and labels is None:
        raise DataError(f"{path}: no labels found (an .npz needs an array y; a table needs a "
                        f"{label!r} column)")
    return features.astype(np.float32), labels


def _npz(path: Path) -> tuple[np.ndarray, np.ndarray | None]:
    with np.load(path, allow_pickle=False) as archive:
        names = list(archive.files)
        key = "X" if "X" in names else names[0]
        return archive[key], (archive["y"] if "y" in names else None)


def _read_csv(path: Path) -> tuple[list[str], list[list[object]]]:
    with open(path, newline="", encoding="utf-8") as handle:
        rows = list(csv.reader(handle))
    if not rows:
        raise DataError(f"{path}: the file is empty")
    return rows[0], [list(row) for row in rows[1:]]


def _read_parquet(path: Path) -> tuple[list[str], list[list[object]]]:
    import pyarrow.parquet as pq

    table = pq.read_table(path)
    columns = [table.column(i).to_pylist() for i in range(table.num_columns)]
    return list(table.column_names), [list(row) for row in zip(*columns, strict=True)]


def _columns(header: list[str], rows: list[list[object]],
             label: str | None) -> tuple[np.ndarray, np.ndarray | None]:
    if label is not None and label in header:
        at = header.index(label)
        labels = np.asarray([row[at] for row in rows])
        features = [[v for i, v in enumerate(row) if i != at] for row in rows]
        with contextlib.suppress(TypeError, ValueError):
            labels = labels.astype(np.int64) if all(float(v).is_integer() for v in labels) else labels
        return np.asarray(features, dtype=np.float64), labels
    return np.asarray(rows, dtype=np.float64), None
