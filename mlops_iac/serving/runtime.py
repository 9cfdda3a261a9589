"""One loaded model version: an onnxruntime session, its signature, and input checks.

The server loads ONNX only, after checking the file against the digest in its settings, so
what runs is exactly what the lock pinned. Optional pre- and post-processing come from a
Python file named in mlops.yaml (`handler`), shipped beside the model.
"""

from __future__ import annotations

import hashlib
import importlib.util
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Any

import numpy as np

from ..errors import MlopsIacError
from .config import ModelConfig
from .protocol import ClientError

ORT_TO_V2 = {
    "tensor(bool)": "BOOL",
    "tensor(uint8)": "UINT8",
    "tensor(uint16)": "UINT16",
    "tensor(uint32)": "UINT32",
    "tensor(uint64)": "UINT64",
    "tensor(int8)": "INT8",
    "tensor(int16)": "INT16",
    "tensor(int32)": "INT32",
    "tensor(int64)": "INT64",
    "tensor(float16)": "FP16",
    "tensor(float)": "FP32",
    "tensor(double)": "FP64",
    "tensor(string)": "BYTES",
    "tensor(bfloat16)": "BF16",
}
_BF16 = 16  # onnx.TensorProto.BFLOAT16


@dataclass(frozen=True)
class TensorSpec:
    name: str
    datatype: str
    shape: tuple[int, ...]  # -1 where dynamic

    def metadata(self) -> dict[str, Any]:
        return {"name": self.name, "datatype": self.datatype, "shape": list(self.shape)}


def _spec(arg: Any, path: Path) -> TensorSpec:
    shape = tuple(d if isinstance(d, int) and d >= 0 else -1 for d in (arg.shape or []))
    datatype = ORT_TO_V2.get(arg.type)
    if datatype is None:  # bfloat16, float8, int4, sequences, maps: no exact v2 mapping here
        raise MlopsIacError(
            f"{path}: tensor {arg.name!r} is {arg.type}, which this server cannot serve; allowed: "
            + ", ".join(sorted(ORT_TO_V2))
            + ". Convert the model with float32 (or float16) inputs and "
            "outputs, e.g. a Cast at the edges of the graph."
        )
    return TensorSpec(arg.name, datatype, shape)


def sha256_of(path: Path) -> str:
    with open(path, "rb") as handle:
        return f"sha256:{hashlib.file_digest(handle, 'sha256').hexdigest()}"


class ModelRuntime:
    def __init__(self, config: ModelConfig, base: Path, *, spinning: bool = True) -> None:
        import onnxruntime as ort

        path = base / config.path
        if config.digest and sha256_of(path) != config.digest:
            raise MlopsIacError(f"{path} does not match its pinned digest {config.digest}; refusing to serve it")
        options = ort.SessionOptions()
        options.intra_op_num_threads = config.threads
        options.inter_op_num_threads = 1
        if not spinning:  # idle pool threads sleep: the cores go to the caller's other threads
            options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        self.session = ort.InferenceSession(str(path), options, providers=_providers(config.gpu))
        self.invalid: type[Exception] = ort.capi.onnxruntime_pybind11_state.InvalidArgument
        self.config = config
        self.name, self.version = config.name, str(config.version)
        self.inputs = {a.name: _spec(a, path) for a in self.session.get_inputs()}
        self.outputs = {a.name: _spec(a, path) for a in self.session.get_outputs()}
        for spec in self.outputs.values():
            if spec.datatype == "BF16":  # onnxruntime's Python API cannot hand bfloat16 back
                raise MlopsIacError(
                    f"{path}: output {spec.name!r} is bfloat16, which onnxruntime cannot "
                    "return to Python; add a Cast to float32 at the end of the graph"
                )
        self.bf16 = [n for n, t in self.inputs.items() if t.datatype == "BF16"]
        self.output_names = list(self.outputs)
        # String tensors take Python str: BYTES arrive as bytes and are decoded as UTF-8 for them.
        self.strings = [n for n, t in self.inputs.items() if t.datatype == "BYTES"]
        self.labels = _labels(self.session.get_modelmeta().custom_metadata_map)
        # Requests can be merged only when every tensor's first dimension is the batch.
        self.batchable = all(t.shape and t.shape[0] == -1 for t in (*self.inputs.values(), *self.outputs.values()))
        # Rows must agree when requests are batched, or when the graph names one batch dimension.
        firsts = {arg.shape[0] if arg.shape else None for arg in self.session.get_inputs()}
        named = len(firsts) == 1 and isinstance(next(iter(firsts)), str)  # one symbol, like "N"
        self.same_rows = self.batchable and (config.max_batch_size > 1 or named)
        self.handler = _load_handler(base / config.handler) if config.handler else None
        self.preprocess: Callable[..., Any] | None = getattr(self.handler, "preprocess", None)
        self.postprocess: Callable[..., Any] | None = getattr(self.handler, "postprocess", None)

    def metadata(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "versions": [self.version],
            "platform": "onnxruntime_onnx",
            "inputs": [t.metadata() for t in self.inputs.values()],
            "outputs": [t.metadata() for t in self.outputs.values()],
        }

    def check(self, feeds: dict[str, np.ndarray], datatypes: dict[str, str] | None) -> dict[str, np.ndarray]:
        """The inputs as the model takes them; refuse, with what was expected, those it cannot take."""
        for name in feeds:
            if name not in self.inputs:
                raise ClientError(400, f"unknown input {name!r}; this model takes: " + ", ".join(self.inputs))
        absent = [spec for name, spec in self.inputs.items() if name not in feeds]
        if absent:  # every one at once: a table of many columns is fixed in one go
            raise ClientError(
                400, "missing input(s) " + ", ".join(f"{s.name!r} ({s.datatype} {list(s.shape)})" for s in absent)
            )
        for name, spec in self.inputs.items():
            array = feeds[name]
            given = datatypes[name] if datatypes else None
            if given is not None and given != spec.datatype:
                raise ClientError(400, f"input {name!r}: got datatype {given}; expected {spec.datatype}")
            if len(array.shape) != len(spec.shape) or any(
                want not in (-1, got) for want, got in zip(spec.shape, array.shape, strict=True)
            ):
                raise ClientError(
                    400, f"input {name!r}: got shape {list(array.shape)}; expected {list(spec.shape)} (-1: any size)"
                )
        if self.same_rows:
            self._check_rows(feeds)
        if self.strings:
            feeds = {**feeds, **{n: _as_str(n, feeds[n]) for n in self.strings}}
        return feeds

    def _check_rows(self, feeds: dict[str, np.ndarray]) -> None:
        """Every input must bring the same rows, or a batch could not be split back by them."""
        rows = {name: array.shape[0] for name, array in feeds.items()}
        if len(set(rows.values())) > 1:
            raise ClientError(
                400,
                "the inputs disagree on the batch size (first dimension): "
                + ", ".join(f"{n} has {r}" for n, r in rows.items()),
            )

    def check_outputs(self, requested: list[str] | None) -> list[str]:
        if requested is None:
            return self.output_names
        for name in requested:
            if name not in self.outputs:
                raise ClientError(400, f"unknown output {name!r}; this model gives: " + ", ".join(self.outputs))
        return requested

    def run(self, feeds: dict[str, np.ndarray], names: list[str] | None = None) -> dict[str, np.ndarray]:
        wanted = names or self.output_names
        if self.bf16:
            feeds = self._bf16_feeds(feeds)
        try:
            return dict(zip(wanted, self.session.run(wanted, feeds), strict=True))
        except self.invalid as exc:  # values the model refuses, e.g. an index out of range
            raise ClientError(400, f"the model refused the input: {exc}") from None

    def _bf16_feeds(self, feeds: dict[str, Any]) -> dict[str, Any]:
        from onnxruntime import OrtValue

        bits = {
            n: OrtValue.ortvalue_from_numpy_with_onnx_type(np.ascontiguousarray(feeds[n]), _BF16) for n in self.bf16
        }
        return {**feeds, **bits}

    def warm_up(self) -> None:
        feeds = {}
        for name, spec in self.inputs.items():
            shape = [1 if d == -1 else d for d in spec.shape]
            if spec.datatype == "BYTES":
                feeds[name] = np.full(shape, "", dtype=object)
            else:
                from .protocol import DTYPES

                feeds[name] = np.zeros(shape, dtype=DTYPES[spec.datatype])
        self.run(feeds)


def _as_str(name: str, array: np.ndarray) -> np.ndarray:
    flat = array.reshape(-1)
    out = np.empty(flat.size, dtype=object)
    try:
        out[:] = [v.decode() if isinstance(v, bytes) else v for v in flat]
    except UnicodeDecodeError as exc:
        raise ClientError(
            400,
            f"input {name!r}: a BYTES element is not UTF-8 ({exc.reason} at byte {exc.start}); this model takes text",
        ) from None
    return out.reshape(array.shape)


def _labels(meta: dict[str, str]) -> list[str] | None:
    """Class labels for `classification` answers: the model's metadata `labels`, a JSON list."""
    import json

    raw = meta.get("labels")
    if raw is None:
        return None
    try:
        labels = json.loads(raw)
    except ValueError:
        labels = None
    if not isinstance(labels, list):
        raise MlopsIacError(f"the model's metadata 'labels' must be a JSON list of strings, got {raw[:80]!r}")
    return [str(label) for label in labels]


def _providers(gpu: bool) -> list[str]:
    if gpu:
        import onnxruntime as ort

        if "CUDAExecutionProvider" in ort.get_available_providers():
            return ["CUDAExecutionProvider", "CPUExecutionProvider"]
    return ["CPUExecutionProvider"]


def _load_handler(path: Path) -> ModuleType:
    spec = importlib.util.spec_from_file_location(f"mlops_handler_{path.stem}", path)
    if spec is None or spec.loader is None:
        raise MlopsIacError(f"cannot load the handler {path}")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    if not (hasattr(module, "preprocess") or hasattr(module, "postprocess")):
        raise MlopsIacError(f"{path} defines neither preprocess(request) nor postprocess(outputs)")
    return module
