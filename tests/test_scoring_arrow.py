"""The buffer conversions of batch scoring against pyarrow's own: same values, same refusals."""

from __future__ import annotations

from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pytest

from mlops_iac.scoring.arrow import _NUMBERS, exact_view, to_arrow

NUMBERS = list(_NUMBERS)
TARGETS = [np.dtype(t) for t in (np.float16, np.float32, np.float64, np.int8, np.int32, np.int64, np.uint8)]


def extremes(kind: pa.DataType) -> np.ndarray:
    """Each type's edges and a few ordinary values, sliced so that the array has an offset."""
    dtype = np.dtype(_NUMBERS[kind])
    info: Any = np.finfo(dtype) if dtype.kind == "f" else np.iinfo(dtype)
    values = np.array([0, 1, info.max, info.min, 3, 2 ** min(53, info.bits - 2) + 1, 7], dtype=dtype)
    return values


@pytest.mark.parametrize("kind", NUMBERS, ids=str)
@pytest.mark.parametrize("target", TARGETS, ids=str)
def test_exact_view_equals_arrows_safe_cast_or_declines(kind: pa.DataType, target: np.dtype[Any]) -> None:
    column = pa.array(extremes(kind), kind).slice(1, 5)
    view = exact_view(column, target)
    try:
        cast = pc.cast(column, pa.from_numpy_dtype(target), safe=True).to_numpy(zero_copy_only=False)
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
        assert view is None, "a conversion Arrow refuses must take the checked path"
        return
    if view is not None:
        assert view.dtype == target and view.tolist() == cast.tolist()


@pytest.mark.parametrize("kind", NUMBERS, ids=str)
def test_exact_view_reads_its_own_type_without_a_copy(kind: pa.DataType) -> None:
    column = pa.array(extremes(kind), kind).slice(2, 4)
    view = exact_view(column, np.dtype(_NUMBERS[kind]))
    assert view is not None and view.tolist() == column.to_pylist()
    assert view.ctypes.data == column.buffers()[1].address + column.offset * view.itemsize


def test_exact_view_declines_nulls_booleans_and_lossy_widenings() -> None:
    assert exact_view(pa.array([1.0, None], pa.float32()), np.dtype(np.float32)) is None
    assert exact_view(pa.array([True, False]), np.dtype(np.float32)) is None
    assert exact_view(pa.array([2**53 + 1], pa.int64()), np.dtype(np.float64)) is None  # not exact in float64
    assert exact_view(pa.array([1.5], pa.float64()), np.dtype(np.float32)) is None  # narrowing


@pytest.mark.parametrize("dtype", [np.dtype(t) for t in _NUMBERS.values()] + [np.dtype(bool)], ids=str)
def test_to_arrow_equals_pa_array(dtype: np.dtype[Any]) -> None:
    values = np.arange(12).astype(dtype)[::2]  # strided: copied into a buffer of its own
    assert to_arrow(values).equals(pa.array(values))
    assert to_arrow(values, pa.float64()).equals(pa.array(values, pa.float64()))
