"""Input rows made from an ONNX model's signature, for when a model comes without a sample.

An ONNX model states what it takes, so the parity check of its offline optimisation, the
drift baseline and profiling can run without a sample file. The rows are random (seeded:
the same model gives the same rows), so they prove the graph runs and the optimised graph
answers as the original; they say nothing about the answers on real data.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import onnx

ROWS = 64
_NUMPY: dict[int, Any] = {
    onnx.TensorProto.FLOAT: np.float32,
    onnx.TensorProto.DOUBLE: np.float64,
    onnx.TensorProto.FLOAT16: np.float16,
    onnx.TensorProto.INT64: np.int64,
    onnx.TensorProto.INT32: np.int32,
    onnx.TensorProto.INT8: np.int8,
    onnx.TensorProto.UINT8: np.uint8,
    onnx.TensorProto.BOOL: np.bool_,
}


def rows_from_signature(model: bytes, rows: int = ROWS) -> tuple[np.ndarray, str]:
    """(inputs for the model's first input, a description of how they were made)."""
    from .frameworks import ConversionError

    proto = onnx.load_from_string(model)
    initializers = {i.name for i in proto.graph.initializer}
    first = next(v for v in proto.graph.input if v.name not in initializers)
    kind = first.type.tensor_type
    dtype = _NUMPY.get(int(kind.elem_type))
    if dtype is None:
        raise ConversionError(
            f"input {first.name!r} has an element type rows cannot be made for "
            f"({onnx.TensorProto.DataType.Name(kind.elem_type)}); give a sample: the model's "
            "`sample` in mlops.yaml, or `mlops-iac convert MODEL@N --sample PATH`"
        )
    dims = [d.dim_value if d.HasField("dim_value") else -1 for d in kind.shape.dim]
    # A dynamic first axis is the batch; other dynamic axes get size 1.
    shape = [rows if (i == 0 and d <= 0) else max(d, 1) for i, d in enumerate(dims)] or [rows]
    rng = np.random.default_rng(0)
    if np.issubdtype(dtype, np.floating):
        data = rng.standard_normal(shape).astype(dtype)
    elif dtype is np.bool_:
        data = rng.integers(0, 2, shape).astype(np.bool_)
    else:
        data = rng.integers(0, 8, shape).astype(dtype)
    return data, f"{shape[0]} rows generated from the signature ({first.name} {dims}; random, seeded)"
