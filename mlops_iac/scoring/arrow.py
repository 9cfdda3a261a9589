"""NumPy arrays to Arrow and back through their buffers, for the fixed-width numbers of a batch.

pyarrow's own conversions (`pa.array`, `to_numpy`) check every call for pandas objects: where
pandas is installed, the first call imports it (half a second of each worker's start-up) and
every call costs tens of microseconds, twenty times a batch of twenty columns. A number column
without nulls is one buffer that both sides read as it lies; anything else (nulls, booleans,
text, nested types) takes pyarrow's conversions.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pyarrow as pa

_NUMBERS = {
    pa.int8(): np.int8,
    pa.int16(): np.int16,
    pa.int32(): np.int32,
    pa.int64(): np.int64,
    pa.uint8(): np.uint8,
    pa.uint16(): np.uint16,
    pa.uint32(): np.uint32,
    pa.uint64(): np.uint64,
    pa.float16(): np.float16,
    pa.float32(): np.float32,
    pa.float64(): np.float64,
}
_TYPES = {np.dtype(v): k for k, v in _NUMBERS.items()}


def to_arrow(values: np.ndarray, kind: pa.DataType | None = None) -> pa.Array:
    """A 1-D array as Arrow, sharing its buffer when it holds numbers of `kind` (or of its own
    type, when no kind is asked for)."""
    own = _TYPES.get(values.dtype) if values.ndim == 1 else None
    if own is None or (kind is not None and kind != own):
        return pa.array(values, kind)
    return pa.Array.from_buffers(own, len(values), [None, pa.py_buffer(np.ascontiguousarray(values))])


def exact_view(column: pa.Array, dtype: np.dtype[Any]) -> np.ndarray | None:
    """The column as `dtype` without going through pyarrow, or None where that could differ from
    Arrow's safe cast: nulls, types other than numbers, conversions that may lose precision."""
    own = _NUMBERS.get(column.type)
    if own is None or column.null_count or not _exact(np.dtype(own), dtype):
        return None
    values = np.frombuffer(column.buffers()[1], own, len(column), column.offset * np.dtype(own).itemsize)
    return values.astype(dtype, copy=False)


def _exact(source: np.dtype[Any], target: np.dtype[Any]) -> bool:
    """Every value of `source` has the same value in `target` (int64 to float64 does not: 2**53 + 1)."""
    if source.kind in "iu" and target.kind == "f":
        return 2 * source.itemsize <= target.itemsize  # the float's significand holds the integer
    return source.kind == target.kind and np.can_cast(source, target, "safe")
