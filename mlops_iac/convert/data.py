"""Reading sample and labelled data: .npy and .npz as float32 matrices, .csv and .parquet as
named, typed columns (a `Table`), and turning either into the feed of an ONNX model."""

from __future__ import annotations

import contextlib
import csv
import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np

from ..errors import MlopsIacError


class DataError(MlopsIacError):
    """A data file could not be read as the tool needs it."""


def read_features(path: Path, label: str | None = None) -> np.ndarray:
    """The feature matrix (float32, 2-D) of a sample file; `label` names a column to leave out."""
    return read_labelled(path, label, need_labels=False)[0]


def read_labelled(
    path: Path, label: str | None = "label", *, need_labels: bool = True
) -> tuple[np.ndarray, np.ndarray | None]:
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
        raise DataError(f"{path}: no labels found (an .npz needs an array y; a table needs a {label!r} column)")
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


def _columns(header: list[str], rows: list[list[object]], label: str | None) -> tuple[np.ndarray, np.ndarray | None]:
    if label is not None and label in header:
        at = header.index(label)
        labels = np.asarray([row[at] for row in rows])
        features = [[v for i, v in enumerate(row) if i != at] for row in rows]
        with contextlib.suppress(TypeError, ValueError):
            labels = labels.astype(np.int64) if all(float(v).is_integer() for v in labels) else labels
        return np.asarray(features, dtype=np.float64), labels
    return np.asarray(rows, dtype=np.float64), None


# --- named, typed columns ----------------------------------------------------------------------
#
# A DataFrame pipeline is checked, converted and served with one ONNX input per column, named
# after the column: that is what v2 clients send (one tensor per column: tritonclient's and
# KServe's InferInput, MLServer's pandas codec), it keeps mixed types apart (a string column
# cannot share a tensor with floats), and a removed, renamed or retyped column shows in the
# signature as a change of that one input.

ColumnKind = Literal["float", "int", "string"]
# The v2 datatype a column kind travels as. Floats go as FP32: the converters compute in
# float32, and the parity check measures what that costs against the native float64 pipeline.
V2_OF_KIND: dict[str, str] = {"float": "FP32", "int": "INT64", "string": "BYTES"}
_ORT_DTYPES: dict[str, Any] = {
    "tensor(float)": np.float32,
    "tensor(double)": np.float64,
    "tensor(int64)": np.int64,
    "tensor(int32)": np.int32,
    "tensor(int16)": np.int16,
    "tensor(int8)": np.int8,
    "tensor(uint8)": np.uint8,
    "tensor(uint16)": np.uint16,
    "tensor(uint32)": np.uint32,
    "tensor(uint64)": np.uint64,
    "tensor(bool)": np.bool_,
    "tensor(float16)": np.float16,
    "tensor(string)": object,
}


@dataclass(frozen=True)
class Table:
    """Rows of named, typed columns, as read from a .csv or .parquet file.

    Floats are float64 (NaN where missing), ints int64, strings Python `str` objects. A string
    tensor has no null, so a missing string is "" here, for the native pipeline and for ONNX
    alike; train on the same convention (see `mlops-iac convert --help`).
    """

    names: tuple[str, ...]
    columns: tuple[np.ndarray, ...]
    kinds: tuple[ColumnKind, ...]
    source: str = "the sample"  # the file it came from, for errors

    @property
    def rows(self) -> int:
        return len(self.columns[0]) if self.columns else 0

    def __len__(self) -> int:
        return self.rows

    def kind(self, name: str) -> ColumnKind:
        return self.kinds[self.names.index(name)]

    def signature(self) -> list[dict[str, Any]]:
        """The columns as v2 tensors: what a client sends, one per column."""
        return [
            {"name": n, "datatype": V2_OF_KIND[k], "shape": [-1, 1]}
            for n, k in zip(self.names, self.kinds, strict=True)
        ]

    def select(self, names: Sequence[str]) -> Table:
        missing = [n for n in names if n not in self.names]
        if missing:
            raise DataError(
                f"{self.source} lacks column(s) {', '.join(map(repr, missing))} that the "
                f"model takes; it has: {', '.join(self.names)}"
            )
        at = [self.names.index(n) for n in names]
        return Table(tuple(names), tuple(self.columns[i] for i in at), tuple(self.kinds[i] for i in at), self.source)

    def take(self, index: Any) -> Table:
        return Table(self.names, tuple(c[index] for c in self.columns), self.kinds, self.source)

    def tile(self, rows: int) -> Table:
        reps = -(-rows // self.rows)
        return Table(self.names, tuple(np.tile(c, reps)[:rows] for c in self.columns), self.kinds, self.source)

    def frame(self) -> Any:
        """A pandas DataFrame, as the native pipeline was trained on."""
        import pandas as pd

        return pd.DataFrame({n: c for n, c in zip(self.names, self.columns, strict=True)}, columns=list(self.names))

    def matrix(self) -> np.ndarray:
        """All columns as one float32 matrix, for models that take a single numeric input."""
        strings = [n for n, k in zip(self.names, self.kinds, strict=True) if k == "string"]
        if strings:
            raise DataError(
                f"{self.source}: column(s) {', '.join(map(repr, strings))} hold strings, but "
                "the model takes one numeric matrix"
            )
        return np.column_stack(self.columns).astype(np.float32)


Sample = np.ndarray | Table


def rows_of(sample: Sample, index: Any) -> Sample:
    return sample.take(index) if isinstance(sample, Table) else sample[index]


_V2_OF_ORT = {
    "tensor(float)": "FP32",
    "tensor(double)": "FP64",
    "tensor(int64)": "INT64",
    "tensor(int32)": "INT32",
    "tensor(bool)": "BOOL",
    "tensor(string)": "BYTES",
}


def complete_rows(sample: Sample) -> Sample:
    """The rows without a missing number: what a JSON request can carry (JSON has no NaN)."""
    if not isinstance(sample, Table):
        return sample[~np.isnan(sample.astype(np.float64)).any(axis=1)]
    gaps = np.zeros(sample.rows, dtype=bool)
    for column, kind in zip(sample.columns, sample.kinds, strict=True):
        if kind == "float":
            gaps |= np.isnan(column)
    return sample.take(~gaps)


def v2_tensors(inputs: Sequence[Any], sample: Sample) -> list[dict[str, Any]]:
    """The sample as the `inputs` of a v2 JSON request: one tensor per model input."""
    arrays = feed(inputs, sample)
    return [
        {
            "name": i.name,
            "datatype": _V2_OF_ORT.get(i.type, "FP32"),
            "shape": list(arrays[i.name].shape),
            "data": arrays[i.name].ravel().tolist(),
        }
        for i in inputs
    ]


def tile_rows(sample: Sample, rows: int) -> Sample:
    if isinstance(sample, Table):
        return sample.tile(rows)
    reps = -(-rows // len(sample))
    return np.ascontiguousarray(np.tile(sample, (reps, 1))[:rows])


def feed(inputs: Sequence[Any], sample: Sample) -> dict[str, np.ndarray]:
    """The onnxruntime feed for a model's inputs (`session.get_inputs()`), from a sample.

    One input per column when the inputs are named after columns; otherwise one input that
    takes the whole matrix.
    """
    names = [i.name for i in inputs]
    if isinstance(sample, Table) and (len(names) > 1 or names[0] in sample.names):
        table = sample.select(names)
        return {i.name: _as_input(c, i, table.kind(i.name)) for i, c in zip(inputs, table.columns, strict=True)}
    if len(names) > 1:
        raise DataError(
            f"the sample is one matrix, but the model takes one input per column "
            f"({', '.join(names)}); give a .csv or .parquet file with those columns"
        )
    matrix = sample.matrix() if isinstance(sample, Table) else sample
    return {names[0]: matrix.astype(_ORT_DTYPES.get(inputs[0].type, np.float32), copy=False)}


def _as_input(column: np.ndarray, spec: Any, kind: ColumnKind) -> np.ndarray:
    dtype = _ORT_DTYPES.get(spec.type, np.float32)
    if (dtype is object) != (kind == "string"):
        raise DataError(f"column {spec.name!r} holds {kind} values; the model's input takes {spec.type}")
    values = column.astype(dtype, copy=False)
    return values.reshape(-1, 1) if len(spec.shape or ()) == 2 else values


def read_sample(path: Path, label: str | None = None) -> Sample:
    """A sample: a matrix from .npy/.npz, named columns from .csv/.parquet (`label` left out)."""
    return read_examples(path, label, need_labels=False)[0]


def read_examples(
    path: Path, label: str | None = "label", *, need_labels: bool = True
) -> tuple[Sample, np.ndarray | None]:
    """(sample, labels): like `read_labelled`, but .csv and .parquet keep their columns."""
    if path.is_dir():
        raise DataError(f"{path} is a folder; a sample is one .npy, .npz, .csv or .parquet file")
    suffix = path.suffix.lower()
    if suffix not in (".csv", ".parquet"):
        return read_labelled(path, label, need_labels=need_labels)
    if not path.exists():
        raise DataError(f"{path} does not exist")
    frame = _read_frame(path)
    labels = None
    if label is not None and label in frame.columns:
        labels = frame.pop(label).to_numpy()
        if labels.dtype.kind == "f" and np.all(np.mod(labels, 1) == 0):
            labels = labels.astype(np.int64)
    if need_labels and labels is None:
        raise DataError(f"{path}: no labels found (a table needs a {label!r} column)")
    if frame.shape[1] == 0 or len(frame) == 0:
        raise DataError(
            f"{path}: expected a non-empty table of features, got {frame.shape[0]} rows and {frame.shape[1]} columns"
        )
    return table_of(frame, str(path)), labels


def _read_frame(path: Path) -> Any:
    try:
        import pandas as pd
    except ImportError:  # pragma: no cover - pandas comes with the convert extra
        raise DataError(f"{path}: reading tables needs pandas: pip install 'mlops-iac[convert]'") from None
    try:
        if path.suffix.lower() == ".csv":
            return pd.read_csv(path)
        return pd.read_parquet(path)
    except (ValueError, OSError, ImportError) as exc:
        raise DataError(f"{path}: cannot read data: {exc}") from None


def table_of(frame: Any, where: str = "the sample") -> Table:
    """A Table from a pandas DataFrame: floats, ints and strings; anything else refused by name."""
    names, columns, kinds = [], [], []
    for name in frame.columns:
        series = frame[name]
        kind = _kind_of(series)
        if kind is None:
            raise DataError(
                f"{where}: column {name!r} has dtype {series.dtype}; columns must hold "
                "floats, ints, booleans or strings (convert dates to numbers or strings "
                "before training)"
            )
        names.append(str(name))
        kinds.append(kind)
        columns.append(_values(series, kind))
    return Table(tuple(names), tuple(columns), tuple(kinds), where)


def _kind_of(series: Any) -> ColumnKind | None:
    import pandas as pd

    dtype = series.dtype
    if isinstance(dtype, pd.CategoricalDtype):
        return "string" if dtype.categories.dtype.kind in "OUS" else _kind_of(series.astype(dtype.categories.dtype))
    if pd.api.types.is_string_dtype(dtype) or dtype.kind == "O":
        return "string"
    if dtype.kind == "f":
        return "float"
    if dtype.kind in "iub":
        return "float" if series.hasnans else "int"  # nullable ints with gaps: NaN needs floats
    return None


def _values(series: Any, kind: ColumnKind) -> np.ndarray:
    if kind == "float":
        return np.asarray(series.to_numpy(dtype=np.float64, na_value=np.nan))
    if kind == "int":
        return np.asarray(series.to_numpy()).astype(np.int64)
    # Strings: a missing value is "" (a string tensor has no null).
    return np.asarray(["" if _missing(v) else str(v) for v in series.tolist()], dtype=object)


def _missing(value: Any) -> bool:
    return value is None or (isinstance(value, float) and math.isnan(value))
