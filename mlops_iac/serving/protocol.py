"""The Open Inference Protocol (KServe / Triton "v2") over REST: requests in, responses out.

Parses JSON tensors and the binary tensor data extension (`Inference-Header-Content-Length`:
a JSON header, then the raw bytes of each tensor whose `binary_data_size` is given), and
answers the same way. Every client mistake becomes a `ClientError` with a 4xx status and a
message that says what was expected.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
import orjson

DTYPES: dict[str, np.dtype[Any]] = {
    "BOOL": np.dtype(np.bool_),
    "UINT8": np.dtype(np.uint8),
    "UINT16": np.dtype(np.uint16),
    "UINT32": np.dtype(np.uint32),
    "UINT64": np.dtype(np.uint64),
    "INT8": np.dtype(np.int8),
    "INT16": np.dtype(np.int16),
    "INT32": np.dtype(np.int32),
    "INT64": np.dtype(np.int64),
    "FP16": np.dtype(np.float16),
    "FP32": np.dtype(np.float32),
    "FP64": np.dtype(np.float64),
    "BYTES": np.dtype(object),
    # bfloat16 has no numpy type: its raw bits travel as uint16 (2 bytes, as in the binary
    # extension) and the model gets them as a bfloat16 tensor (`ModelRuntime.run`).
    "BF16": np.dtype(np.uint16),
}
# Which numpy kinds of JSON data each datatype accepts: no silent float -> int truncation.
_KINDS = {
    name: (
        "b"
        if name == "BOOL"
        else "OSU"
        if name == "BYTES"
        else "biuf"
        if name in ("FP16", "FP32", "FP64", "BF16")
        else "biu"
    )
    for name in DTYPES
}


class ClientError(Exception):
    """A request the client got wrong: answered with `status` and never a 5xx."""

    def __init__(self, status: int, message: str, headers: list[tuple[bytes, bytes]] | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.headers = headers  # e.g. `allow` on a 405


@dataclass(slots=True)
class Request:
    id: str | None
    inputs: dict[str, np.ndarray]
    datatypes: dict[str, str]
    outputs: list[str] | None  # None: every output
    binary_outputs: set[str] = field(default_factory=set)
    parameters: dict[str, Any] = field(default_factory=dict)
    classification: dict[str, int] = field(default_factory=dict)  # output name -> top k
    # Set where a shadow may mirror the request: its collected record, when sampled, is held here
    # rather than written, and written once after the answer (see shadow.Shadow.after).
    held: bool = False
    record: dict[str, Any] | None = None


def parse(body: bytes, header_length: str | None) -> Request:
    """A v2 inference request from the raw body (JSON, or JSON + binary tensors)."""
    json_part, binary = _split(body, header_length)
    try:
        doc = orjson.loads(json_part)
    except orjson.JSONDecodeError as exc:
        raise ClientError(400, f"the request body is not valid JSON: {exc}") from None
    if not isinstance(doc, dict):
        raise ClientError(400, "the request body must be a JSON object with an 'inputs' list")
    raw_inputs = doc.get("inputs")
    if not isinstance(raw_inputs, list) or not raw_inputs:
        raise ClientError(400, "'inputs' must be a non-empty list of tensors")
    request_id = doc.get("id")
    if request_id is not None and not isinstance(request_id, str):
        raise ClientError(400, "'id' must be a string")
    parameters = _mapping(doc.get("parameters"), "parameters")
    inputs: dict[str, np.ndarray] = {}
    datatypes: dict[str, str] = {}
    offset = 0
    for i, tensor in enumerate(raw_inputs):
        name, datatype, array, used = _tensor(tensor, i, binary, offset)
        if name in inputs:
            raise ClientError(400, f"input {name!r} is given twice")
        inputs[name], datatypes[name] = array, datatype
        offset += used
    if offset != len(binary):
        raise ClientError(
            400, f"the binary part holds {len(binary)} bytes but the inputs' binary_data_size add up to {offset}"
        )
    binary_default = _flag(parameters, "binary_data_output", "parameters")
    outputs, binary_outputs, classification = _requested(doc.get("outputs"), binary_default)
    return Request(request_id, inputs, datatypes, outputs, binary_outputs, parameters, classification)


def _flag(params: dict[str, Any], key: str, where: str, default: bool = False) -> bool:
    """A boolean parameter: JSON true or false only, so that the string "false" never reads as true."""
    value = params.get(key, default)
    if not isinstance(value, bool):
        raise ClientError(400, f"{where}.{key} must be true or false (a JSON boolean), got {value!r}")
    return value


def _split(body: bytes, header_length: str | None) -> tuple[bytes, bytes]:
    if header_length is None:
        return body, b""
    try:
        size = int(header_length)
    except ValueError:
        raise ClientError(400, "Inference-Header-Content-Length must be a whole number") from None
    if not 0 < size <= len(body):
        raise ClientError(400, f"Inference-Header-Content-Length is {size}, but the body has {len(body)} bytes")
    return body[:size], body[size:]


def _mapping(value: Any, what: str) -> dict[str, Any]:
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise ClientError(400, f"'{what}' must be a JSON object")
    return value


def _tensor(tensor: Any, i: int, binary: bytes, offset: int) -> tuple[str, str, np.ndarray, int]:
    if not isinstance(tensor, dict):
        raise ClientError(400, f"inputs[{i}] must be an object with name, datatype, shape and data")
    name, datatype, shape = tensor.get("name"), tensor.get("datatype"), tensor.get("shape")
    if not isinstance(name, str) or not name:
        raise ClientError(400, f"inputs[{i}].name must be a non-empty string")
    if not isinstance(datatype, str) or datatype not in DTYPES:
        raise ClientError(400, f"input {name!r}: datatype {datatype!r} is not one of " + ", ".join(DTYPES))
    if (
        not isinstance(shape, list)
        or len(shape) > 32
        or not all(isinstance(d, int) and not isinstance(d, bool) and 0 <= d < 2**31 for d in shape)
    ):
        raise ClientError(400, f"input {name!r}: shape must be a list of non-negative integers")
    count = 1
    for dim in shape:
        count *= dim
    params = _mapping(tensor.get("parameters"), f"inputs[{i}].parameters")
    size = params.get("binary_data_size")
    if size is not None:
        return name, datatype, from_binary(name, datatype, shape, count, size, binary, offset), size
    if "data" not in tensor:
        raise ClientError(400, f"input {name!r} has neither 'data' nor a binary_data_size parameter")
    return name, datatype, _from_json(name, datatype, shape, count, tensor["data"]), 0


def _from_json(name: str, datatype: str, shape: list[int], count: int, data: Any) -> np.ndarray:
    if not isinstance(data, list):
        data = [data]
    if datatype == "BYTES":
        return _bytes_from_json(name, shape, count, data)
    try:
        found = np.asarray(data)
    except ValueError:
        raise ClientError(
            400, f"input {name!r}: data is a ragged list; expected {count} values for shape {shape}"
        ) from None
    if found.size != count:
        raise ClientError(400, f"input {name!r}: shape {shape} needs {count} values, data has {found.size}")
    if found.size and datatype[0] in "IU" and found.dtype.kind in "fO":
        return _big_ints(name, datatype, shape, data)  # e.g. UINT64 values >= 2**63 read as floats
    if found.size and found.dtype.kind not in _KINDS[datatype]:
        raise ClientError(400, f"input {name!r}: data holds {_kind_name(found.dtype)}, which is not {datatype}")
    if datatype == "BF16":
        return bf16_bits(found.astype(np.float32).reshape(shape))
    try:
        with np.errstate(over="raise", invalid="raise"):
            converted = found.astype(DTYPES[datatype]).reshape(shape)
        if found.dtype.kind in "iu" and datatype[0] in "IU" and not np.array_equal(converted, found.reshape(shape)):
            raise OverflowError  # an integer that does not fit the narrower type
        return converted
    except (TypeError, ValueError, OverflowError, FloatingPointError):
        raise ClientError(400, f"input {name!r}: the values do not fit {datatype}") from None


def bf16_bits(values: np.ndarray) -> np.ndarray:
    """float32 to bfloat16 bits, rounding to nearest even (as PyTorch and ml_dtypes do)."""
    bits = values.view(np.uint32).astype(np.uint64)
    rounded = ((bits + 0x7FFF + ((bits >> 16) & 1)) >> 16).astype(np.uint16)
    nan = np.isnan(values)
    if nan.any():
        rounded[nan] = ((bits[nan] >> 16) | 0x0040).astype(np.uint16)  # stays a (quiet) NaN
    return rounded


def _big_ints(name: str, datatype: str, shape: list[int], data: list[Any]) -> np.ndarray:
    """Integers numpy could not hold in one integer type (it reads 2**63 beside 1 as floats):
    taken from the JSON values themselves and checked one by one, exactly."""
    flat = np.asarray(data, dtype=object).reshape(-1)
    if not all(type(v) is int for v in flat):  # a float, a bool, a string, null: not an integer
        raise ClientError(400, f"input {name!r}: data holds non-integers, which is not {datatype}")
    try:
        converted = flat.astype(DTYPES[datatype])
    except (OverflowError, ValueError, TypeError):
        raise ClientError(400, f"input {name!r}: the values do not fit {datatype}") from None
    if converted.astype(object).tolist() != flat.tolist():
        raise ClientError(400, f"input {name!r}: the values do not fit {datatype}")
    return converted.reshape(shape)


def _bytes_from_json(name: str, shape: list[int], count: int, data: list[Any]) -> np.ndarray:
    try:
        found = np.asarray(data, dtype=object)
    except ValueError:
        raise ClientError(
            400, f"input {name!r}: data is a ragged list; expected {count} strings for shape {shape}"
        ) from None
    flat = found.reshape(-1)
    if flat.size != count:
        raise ClientError(400, f"input {name!r}: shape {shape} needs {count} values, data has {flat.size}")
    items = []
    for value in flat:
        if not isinstance(value, str):  # null, numbers, objects, nested lists: not BYTES elements
            raise ClientError(400, f"input {name!r}: BYTES data must be strings; got {_json_type(value)}")
        items.append(value.encode())
    out = np.empty(count, dtype=object)
    out[:] = items
    return out.reshape(shape)


def _json_type(value: Any) -> str:
    return {
        type(None): "null",
        bool: "a boolean",
        int: "a number",
        float: "a number",
        dict: "an object",
        list: "a nested list of the wrong shape",
    }.get(type(value), type(value).__name__)


def _kind_name(dtype: np.dtype[Any]) -> str:
    return {"U": "strings", "S": "bytes", "O": "mixed values", "b": "booleans", "f": "floats"}.get(
        dtype.kind, "integers"
    )


def from_binary(
    name: str, datatype: str, shape: list[int], count: int, size: Any, binary: bytes, offset: int
) -> np.ndarray:
    if not isinstance(size, int) or isinstance(size, bool) or size < 0:
        raise ClientError(400, f"input {name!r}: binary_data_size must be a non-negative integer")
    chunk = binary[offset : offset + size]
    if len(chunk) != size:
        raise ClientError(400, f"input {name!r}: truncated binary data: {size} bytes announced, {len(chunk)} sent")
    if datatype == "BYTES":
        return _unpack_bytes(name, chunk, shape, count)
    dtype = DTYPES[datatype]
    if size != count * dtype.itemsize:
        raise ClientError(
            400, f"input {name!r}: shape {shape} of {datatype} needs {count * dtype.itemsize} bytes, got {size}"
        )
    if datatype == "BOOL" and chunk.translate(None, b"\x00\x01"):
        raise ClientError(400, f"input {name!r}: BOOL bytes must be 0 or 1")  # numpy would keep other bytes
    return np.frombuffer(chunk, dtype=dtype.newbyteorder("<")).astype(dtype, copy=False).reshape(shape)


def _unpack_bytes(name: str, chunk: bytes, shape: list[int], count: int) -> np.ndarray:
    items, at = [], 0
    while at < len(chunk):
        if at + 4 > len(chunk):
            raise ClientError(400, f"input {name!r}: truncated BYTES element length")
        length = int.from_bytes(chunk[at : at + 4], "little")
        at += 4
        if at + length > len(chunk):
            raise ClientError(400, f"input {name!r}: truncated BYTES element")
        items.append(chunk[at : at + length])
        at += length
    if len(items) != count:
        raise ClientError(400, f"input {name!r}: shape {shape} needs {count} elements, got {len(items)}")
    out = np.empty(count, dtype=object)  # np.asarray would make equal-length bytes a 2-D array
    out[:] = items
    return out.reshape(shape)


def _requested(raw: Any, binary_default: bool) -> tuple[list[str] | None, set[str], dict[str, int]]:
    if raw is None:
        return None, ({"*"} if binary_default else set()), {}
    if not isinstance(raw, list):
        raise ClientError(400, "'outputs' must be a list of {name, parameters}")
    names, binary, classification = [], set(), {}
    for i, item in enumerate(raw):
        if not isinstance(item, dict) or not isinstance(item.get("name"), str):
            raise ClientError(400, f"outputs[{i}] must be an object with a name")
        names.append(item["name"])
        params = _mapping(item.get("parameters"), f"outputs[{i}].parameters")
        if _flag(params, "binary_data", f"outputs[{i}].parameters", binary_default):
            binary.add(item["name"])
        top = params.get("classification")
        if top is not None:
            if not isinstance(top, int) or isinstance(top, bool) or top < 1:
                raise ClientError(
                    400,
                    f"outputs[{i}].parameters.classification must be a positive "
                    f"integer (how many top classes), got {top!r}",
                )
            classification[item["name"]] = top
    return names, binary, classification


_BY_DTYPE = {dtype: name for name, dtype in DTYPES.items() if name not in ("BYTES", "BF16")}


def datatype_of(array: np.ndarray) -> str:
    found = _BY_DTYPE.get(array.dtype)  # a dict lookup: this runs for every output of every request
    if found is not None:
        return found
    if array.dtype.kind in "OSU":
        return "BYTES"
    raise ValueError(f"no v2 datatype for {array.dtype}")


def encode(model: str, version: str, request: Request, outputs: dict[str, np.ndarray]) -> tuple[bytes, int | None]:
    """The response body, and the JSON header's length when binary data follows it."""
    described, blobs = [], []
    every = "*" in request.binary_outputs
    for name, array in outputs.items():
        entry: dict[str, Any] = {"name": name, "datatype": datatype_of(array), "shape": list(array.shape)}
        if every or name in request.binary_outputs:
            blob = to_bytes(array)
            entry["parameters"] = {"binary_data_size": len(blob)}
            blobs.append(blob)
        else:
            entry["data"] = _json_data(array)
        described.append(entry)
    head: dict[str, Any] = {"model_name": model, "model_version": version, "outputs": described}
    if request.id is not None:
        head["id"] = request.id
    header = orjson.dumps(head, option=orjson.OPT_SERIALIZE_NUMPY)
    if not blobs:
        return header, None
    return header + b"".join(blobs), len(header)


def _json_data(array: np.ndarray) -> Any:
    flat = array.reshape(-1)
    if array.dtype.kind in "OSU":
        return [v.decode("utf-8", "replace") if isinstance(v, bytes) else str(v) for v in flat]
    return flat  # orjson writes numpy arrays natively (OPT_SERIALIZE_NUMPY)


def to_bytes(array: np.ndarray) -> bytes:
    if array.dtype.kind in "OSU":
        parts = []
        for item in array.reshape(-1):
            raw = item if isinstance(item, bytes) else str(item).encode()
            parts.append(len(raw).to_bytes(4, "little") + raw)
        return b"".join(parts)
    return np.ascontiguousarray(array, dtype=array.dtype.newbyteorder("<")).tobytes()
