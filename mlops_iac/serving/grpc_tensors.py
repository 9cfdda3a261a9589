"""The Open Inference Protocol over gRPC: `ModelInferRequest` in, `ModelInferResponse` out.

A gRPC request becomes the same `protocol.Request` a REST request becomes, so both reach the
model through the same checks (`ModelRuntime.check`) and the same batcher. Tensor data comes
either typed (`InferTensorContents`, one repeated field per datatype) or raw
(`raw_input_contents`: little-endian elements, BYTES as 4-byte-length-prefixed items, exactly
the REST binary extension's layout, so the same decoder reads both). Answers always go out raw
(`raw_output_contents`), as Triton answers and as tritonclient.grpc reads them.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from . import open_inference_grpc_pb2 as pb
from .protocol import DTYPES, ClientError, Request, datatype_of, from_binary, to_bytes

# Which InferTensorContents field holds each datatype; FP16 and BF16 travel raw only.
CONTENTS = {
    "BOOL": "bool_contents",
    "INT8": "int_contents",
    "INT16": "int_contents",
    "INT32": "int_contents",
    "INT64": "int64_contents",
    "UINT8": "uint_contents",
    "UINT16": "uint_contents",
    "UINT32": "uint_contents",
    "UINT64": "uint64_contents",
    "FP32": "fp32_contents",
    "FP64": "fp64_contents",
    "BYTES": "bytes_contents",
}
_FIELDS = sorted(set(CONTENTS.values()))


def request_of(message: pb.ModelInferRequest) -> Request:
    """The request as the REST path would have parsed it; a `ClientError` for anything malformed."""
    if not message.inputs:
        raise ClientError(400, "'inputs' must hold at least one tensor")
    raw = list(message.raw_input_contents)
    if raw and len(raw) != len(message.inputs):
        raise ClientError(
            400,
            f"raw_input_contents holds {len(raw)} entries for {len(message.inputs)} inputs; "
            "give one per input, in the order of 'inputs'",
        )
    inputs: dict[str, np.ndarray] = {}
    datatypes: dict[str, str] = {}
    for i, tensor in enumerate(message.inputs):
        name = tensor.name
        if not name:
            raise ClientError(400, f"inputs[{i}].name must be a non-empty string")
        if name in inputs:
            raise ClientError(400, f"input {name!r} is given twice")
        inputs[name] = _tensor(tensor, raw[i] if raw else None)
        datatypes[name] = tensor.datatype
    outputs, classification = _requested(message)
    parameters = {key: _parameter(value) for key, value in message.parameters.items()}
    return Request(message.id or None, inputs, datatypes, outputs, set(), parameters, classification)


def _tensor(tensor: Any, raw: bytes | None) -> np.ndarray:
    name, datatype = tensor.name, tensor.datatype
    if datatype not in DTYPES:
        raise ClientError(400, f"input {name!r}: datatype {datatype!r} is not one of " + ", ".join(DTYPES))
    shape = list(tensor.shape)
    if len(shape) > 32 or not all(0 <= d < 2**31 for d in shape):
        raise ClientError(400, f"input {name!r}: shape must be a list of non-negative integers")
    count = int(np.prod(shape, dtype=np.int64))
    given = [f for f in _FIELDS if len(getattr(tensor.contents, f))]
    if raw is not None:
        if given:
            raise ClientError(400, f"input {name!r}: give its data in raw_input_contents or in contents, not both")
        return from_binary(name, datatype, shape, count, len(raw), raw, 0)
    field = CONTENTS.get(datatype)
    if field is None:
        raise ClientError(400, f"input {name!r}: {datatype} data must come in raw_input_contents")
    if any(f != field for f in given):
        raise ClientError(
            400,
            f"input {name!r}: {datatype} data goes in contents.{field}; got "
            + ", ".join(f"contents.{f}" for f in given),
        )
    values = getattr(tensor.contents, field)
    if len(values) != count:
        raise ClientError(
            400, f"input {name!r}: shape {shape} needs {count} values, contents.{field} has {len(values)}"
        )
    return _typed(name, datatype, shape, values)


def _typed(name: str, datatype: str, shape: list[int], values: Any) -> np.ndarray:
    if datatype == "BYTES":
        out = np.empty(len(values), dtype=object)  # np.asarray would make equal-length bytes a 2-D array
        out[:] = list(values)
        return out.reshape(shape)
    wide: np.ndarray = np.asarray(
        values,
        dtype={"bool": np.bool_, "fp32": np.float32, "fp64": np.float64, "uint64": np.uint64, "uint": np.uint64}.get(
            CONTENTS[datatype].removesuffix("_contents"), np.int64
        ),
    )
    converted = wide.astype(DTYPES[datatype])
    # int_contents are int32 for INT8 to INT32 alike: an INT8 of 300 must not wrap around.
    if converted.dtype.kind in "iu" and not np.array_equal(converted, wide):
        raise ClientError(400, f"input {name!r}: the values do not fit {datatype}")
    return converted.reshape(shape)


def _requested(message: pb.ModelInferRequest) -> tuple[list[str] | None, dict[str, int]]:
    if not message.outputs:
        return None, {}
    names, classification = [], {}
    for i, output in enumerate(message.outputs):
        if not output.name:
            raise ClientError(400, f"outputs[{i}].name must be a non-empty string")
        names.append(output.name)
        top = output.parameters.get("classification")
        if top is None:
            continue
        k = _parameter(top)
        if not isinstance(k, int) or isinstance(k, bool) or k < 1:
            raise ClientError(
                400,
                f"outputs[{i}].parameters.classification must be a positive integer (how many top classes), got {k!r}",
            )
        classification[output.name] = k
    return names, classification


def _parameter(value: pb.InferParameter) -> Any:
    choice = value.WhichOneof("parameter_choice")
    return getattr(value, choice) if choice else None


def response_of(
    model: str, version: str, request_id: str | None, outputs: dict[str, np.ndarray]
) -> pb.ModelInferResponse:
    response = pb.ModelInferResponse(model_name=model, model_version=version, id=request_id or "")
    for name, array in outputs.items():
        response.outputs.add(name=name, datatype=datatype_of(array), shape=array.shape)
        response.raw_output_contents.append(to_bytes(array))
    return response


def metadata_of(doc: dict[str, Any]) -> pb.ModelMetadataResponse:
    """The REST metadata document (`ModelRuntime.metadata`) as its gRPC message."""
    tensor = pb.ModelMetadataResponse.TensorMetadata
    return pb.ModelMetadataResponse(
        name=doc["name"],
        versions=doc["versions"],
        platform=doc["platform"],
        inputs=[tensor(**t) for t in doc["inputs"]],
        outputs=[tensor(**t) for t in doc["outputs"]],
    )
