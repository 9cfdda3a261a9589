"""From a file's columns to the model's inputs: the check before any work, and per batch the
arrays, with the rows that cannot be scored and why.

How columns meet the model (no handler): a column named like a model input feeds it (a
list column for an input of shape [-1, n], a scalar column for [-1] or [-1, 1]). A model with
one input of shape [-1, n] and no such column takes the file's other columns, in order:
n scalar columns, or one column of n-wide lists (a .npy array). Id columns (`--id`, by
default those named `id` or ending in `_id`) are never features; they are copied to the
output. With a handler, every non-id column is a request input of its own name, as in a
v2 request, and the handler's `preprocess` makes the model's inputs.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from ..errors import MlopsIacError
from ..serving.protocol import DTYPES
from ..serving.runtime import TensorSpec
from .arrow import exact_view


@dataclass(frozen=True)
class InputMap:
    """One model (or request) input and the columns that feed it."""

    name: str
    columns: tuple[str, ...]
    dtype: np.dtype[Any] | None  # None: as the column is (a handler's request input)
    width: int | None  # None: one value per row, shape [rows]
    stacked: bool  # several scalar columns side by side (else one column)


def default_ids(names: list[str]) -> list[str]:
    return [n for n in names if n.lower() == "id" or n.lower().endswith("_id")]


def plan_inputs(
    path: Path, schema: pa.Schema, inputs: dict[str, TensorSpec], ids: list[str], handler: bool
) -> list[InputMap]:
    """How this file feeds the model, or a `MlopsIacError` naming file, column, dtype and shape."""
    missing = [i for i in ids if i not in schema.names]
    if missing:
        raise MlopsIacError(f"{path}: id column(s) {', '.join(missing)} not found; columns: " + ", ".join(schema.names))
    features = [n for n in schema.names if n not in ids]
    if handler:
        return [InputMap(n, (n,), None, _width(schema.field(n).type), False) for n in features]
    absent = [n for n in inputs if n not in schema.names]
    if len(inputs) > 1 and absent:  # every missing column at once, not one per rerun
        raise MlopsIacError(
            f"{path}: no column for the model input(s) "
            + ", ".join(f"{n!r} ({_describe(inputs[n])})" for n in absent)
            + f"; columns: {', '.join(schema.names)}"
        )
    maps = []
    for name, spec in inputs.items():
        if len(spec.shape) not in (1, 2):
            raise MlopsIacError(
                f"model input {name!r} has shape {list(spec.shape)}; batch scoring "
                "takes inputs of shape [-1] or [-1, n]"
            )
        dtype = DTYPES[spec.datatype]
        want = spec.shape[1] if len(spec.shape) == 2 else None
        if name in schema.names:
            maps.append(_single(path, schema.field(name), spec, dtype, want))
        elif len(inputs) == 1:
            maps.append(_by_position(path, schema, features, spec, dtype, want))
        else:
            raise MlopsIacError(
                f"{path}: no column {name!r} for the model input {name!r} "
                f"({_describe(spec)}); columns: {', '.join(schema.names)}"
            )
    return maps


def _describe(spec: TensorSpec) -> str:
    return f"{spec.datatype} {list(spec.shape)}"


def _width(kind: pa.DataType) -> int | None:
    if pa.types.is_fixed_size_list(kind):
        return int(kind.list_size)
    return -1 if pa.types.is_list(kind) or pa.types.is_large_list(kind) else None


def _single(path: Path, field: pa.Field, spec: TensorSpec, dtype: np.dtype[Any], want: int | None) -> InputMap:
    width = _width(field.type)
    value = field.type.value_type if width is not None else field.type
    scalar = want is None or want == 1
    shape_ok = width in (None, want) if scalar else width is not None and width in (-1, want)
    if not (_castable(value, dtype) and shape_ok):
        wanted = "one value per row" if scalar else f"lists of {want}"
        raise MlopsIacError(
            f"{path}: column {field.name!r} is {field.type}; the model input {spec.name!r} "
            f"expects {_describe(spec)} ({wanted} of {dtype})"
        )
    return InputMap(spec.name, (field.name,), dtype, width if width is not None else want, False)


def _by_position(
    path: Path, schema: pa.Schema, features: list[str], spec: TensorSpec, dtype: np.dtype[Any], want: int | None
) -> InputMap:
    if len(features) == 1 and _width(schema.field(features[0]).type) is not None:
        return _single(path, schema.field(features[0]), spec, dtype, want)
    count = want if want is not None and want > 0 else 1
    if len(features) != count:
        raise MlopsIacError(
            f"{path}: the model input {spec.name!r} takes {_describe(spec)}: {count} feature "
            f"column(s) (or one column {spec.name!r} of {count}-wide lists); found "
            f"{len(features)}: {', '.join(features) or '(none)'} (id columns: --id)"
        )
    for name in features:
        kind = schema.field(name).type
        if not _castable(kind, dtype):
            raise MlopsIacError(
                f"{path}: column {name!r} is {kind}; the model input {spec.name!r} "
                f"expects {_describe(spec)} of {dtype} values"
            )
    return InputMap(spec.name, tuple(features), dtype, want, want is not None)


def _castable(kind: pa.DataType, dtype: np.dtype[Any]) -> bool:
    """Can values of this column become the model's dtype (strings: row by row, CSV's text)?"""
    if pa.types.is_string(kind) or pa.types.is_large_string(kind) or pa.types.is_null(kind):
        return True
    if dtype.kind == "O":
        return bool(pa.types.is_binary(kind))
    if pa.types.is_boolean(kind):
        return dtype.kind == "b"
    if pa.types.is_integer(kind):
        return dtype.kind in "iuf"
    if pa.types.is_floating(kind):
        return dtype.kind == "f"
    return False


def arrays(table: pa.Table, maps: list[InputMap], reasons: dict[int, str]) -> dict[str, np.ndarray]:
    """The inputs of every row of `table`; rows that cannot be converted get a reason (and
    some placeholder value: the caller drops them)."""
    return {m.name: _input(table, m, reasons) for m in maps}


def _input(table: pa.Table, m: InputMap, reasons: dict[int, str]) -> np.ndarray:
    if m.stacked:
        columns = [_scalar(table.column(c), c, m.dtype, reasons) for c in m.columns]
        return np.stack(columns, axis=1)
    (name,) = m.columns
    column = table.column(name).combine_chunks() if table.num_rows else table.column(name)
    if m.width is None or not _is_list(column.type):
        out = _scalar(column, name, m.dtype, reasons)
        return out.reshape(-1, 1) if m.width == 1 else out
    return _lists(column, name, m, reasons)


def _is_list(kind: pa.DataType) -> bool:
    return bool(pa.types.is_list(kind) or pa.types.is_large_list(kind) or pa.types.is_fixed_size_list(kind))


def _scalar(column: Any, name: str, dtype: np.dtype[Any] | None, reasons: dict[int, str]) -> np.ndarray:
    column = pa.chunked_array([column]) if isinstance(column, pa.Array) else column
    column = column.combine_chunks() if column.num_chunks != 1 else column.chunk(0)
    if dtype is None:  # a handler's input: as the file has it (text from CSV becomes numbers when it can)
        dtype = np.dtype(np.float64) if pa.types.is_string(column.type) else None
        if dtype is None:
            return np.asarray(_nulls_rejected(column, name, reasons).to_numpy(zero_copy_only=False))
    exact = exact_view(column, dtype)
    if exact is not None:  # numbers without nulls, read as they lie: the common case, kept cheap
        return exact
    target = pa.from_numpy_dtype(dtype) if dtype.kind != "O" else pa.string()
    if column.null_count:
        for i in np.flatnonzero(column.is_null().to_numpy(zero_copy_only=False)):
            reasons.setdefault(int(i), f"column {name!r}: missing value")
    try:
        cast = pc.cast(column, target, safe=True)
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
        cast = _cast_each(column, name, target, reasons)
    if dtype.kind == "f":
        _overflows(column, cast, name, dtype, reasons)
    if cast.null_count:
        cast = cast.fill_null(pa.scalar(0 if dtype.kind != "O" else "", target))
    return np.asarray(cast.to_numpy(zero_copy_only=False)).astype(dtype, copy=False)


def _overflows(column: pa.Array, cast: pa.Array, name: str, dtype: np.dtype[Any], reasons: dict[int, str]) -> None:
    """A value too large for the model's float type casts to an infinity without complaint
    ("1e400" as text, 1e300 into float32): that is a reject, not a score of inf. A value
    that is an infinity (inf as text, or as a double) stays one."""
    infinite = pc.is_inf(cast)
    if not pc.any(infinite).as_py():  # the common case: one pass, no Python per row
        return
    for i in np.flatnonzero(infinite.fill_null(False).to_numpy(zero_copy_only=False)):
        value = column[int(i)].as_py()
        if not _is_infinity(value):
            reasons.setdefault(int(i), f"column {name!r}: value {str(value)[:40]} overflows {dtype}")


def _is_infinity(value: Any) -> bool:
    if isinstance(value, str):
        return value.strip().lower().lstrip("+-") in ("inf", "infinity")
    return isinstance(value, float) and math.isinf(value)


def _nulls_rejected(column: pa.Array, name: str, reasons: dict[int, str]) -> pa.Array:
    if column.null_count:
        for i in np.flatnonzero(column.is_null().to_numpy(zero_copy_only=False)):
            reasons.setdefault(int(i), f"column {name!r}: missing value")
    return column


def _cast_each(column: pa.Array, name: str, target: pa.DataType, reasons: dict[int, str]) -> pa.Array:
    """The slow path, for a batch holding a value that does not convert: find which rows."""
    values = []
    for i, value in enumerate(column.to_pylist()):
        try:
            values.append(None if value is None else pc.cast(pa.array([value]), target, safe=True)[0].as_py())
        except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
            reasons.setdefault(i, f"column {name!r}: {str(value)[:40]!r} is not {target}")
            values.append(None)
    return pa.array(values, target)


def _lists(column: pa.Array, name: str, m: InputMap, reasons: dict[int, str]) -> np.ndarray:
    rows = len(column)
    lengths = pc.list_value_length(column).fill_null(-1).to_numpy(zero_copy_only=False)
    width = m.width if m.width is not None and m.width > 0 else int(lengths.max(initial=0))
    bad = np.flatnonzero(lengths != width)
    for i in bad:
        reasons.setdefault(
            int(i),
            f"column {name!r}: "
            + ("missing value" if lengths[i] < 0 else f"{int(lengths[i])} values; expected {width}"),
        )
    # A bad value inside a list of the right length (missing, too large) rejects its row.
    inner: dict[int, str] = {}
    if len(bad):  # keep the shape: placeholder rows of zeros, dropped later
        good = np.flatnonzero(lengths == width)
        flat = _scalar(pc.list_flatten(column.take(pa.array(good))), name, m.dtype, inner)
        for index in inner:
            reasons.setdefault(int(good[index // width]), inner[index])
        out = np.zeros((rows, width), dtype=flat.dtype)
        out[good] = flat.reshape(len(good), width)
        return out
    flat = _scalar(pc.list_flatten(column), name, m.dtype, inner)
    for index in inner:
        reasons.setdefault(index // width, inner[index])
    return flat.reshape(rows, width)
