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
    "tensor(bool)": "BOOL", "tensor(uint8)": "UINT8", "tensor(uint16)": "UINT16",
    "tensor(uint32)": "UINT32", "tensor(uint64)": "UINT64", "tensor(int8)": "INT8",
    "tensor(int16)": "INT16", "tensor(int32)": "INT32", "tensor(int64)": "INT64",
    "tensor(float16)": "FP16", "tensor(float)": "FP32", "tensor(double)": "FP64",
    "tensor(string)": "BYTES",
}


@dataclass(frozen=True)
class TensorSpec:
    name: str
    datatype: str
    shape: tuple[int, ...]  # -1 where dynamic

    def metadata(self) -> dict[str, Any]:
        return {"name": self.name, "datatype": self.datatype, "shape": list(self.shape)}


def _spec(arg: Any) -> TensorSpec:
    shape = tuple(d if isinstance(d, int) and d >= 0 else -1 for d in (arg.shape or []))
    return TensorSpec(arg.name, ORT_TO_V2.get(arg.type, "BYTES"), shape)


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return f"sha256:{digest.hexdigest()}"


class ModelRuntime:
    def __init__(self, config: ModelConfig, base: Path) -> None:
        import onnxruntime as ort

        path = base / config.path
        if config.digest and sha256_of(path) != config.digest:
            raise MlopsIacError(f"{path} does not match its pinned digest {config.digest}; refusing "
                                "to serve it")
        options = ort.SessionOptions()
        options.intra_op_num_threads = config.threads
        options.inter_op_num_threads = 1
        self.session = ort.InferenceSession(str(path), options, providers=_providers(config.gpu))
        self.config = config
        self.name, self.version = config.name, str(config.version)
        self.inputs = {a.name: _spec(a) for a in self.session.get_inputs()}
        self.outputs = {a.name: _spec(a) for a in self.session.get_outputs()}
        self.output_names = list(self.outputs)
        # Requests can be merged only when every tensor's first dimension is the batch.
        self.batchable = all(t.shape and t.shape[0] == -1
                             for t in (*self.inputs.values(), *self.outputs.values()))
        self.handler = _load_handler(base / config.handler) if config.handler else None
        self.preprocess: Callable[..., Any] | None = getattr(self.handler, "preprocess", None)
        self.postprocess: Callable[..., Any] | None = getattr(self.handler, "postprocess", None)

    def metadata(self) -> dict[str, Any]:
        return {"name": self.name, "versions": [self.version], "platform": "onnxruntime_onnx",
                "inputs": [t.metadata() for t in self.inputs.values()],
                "outputs": [t.metadata() for t in self.outputs.values()]}

    def check(self, feeds: dict[str, np.ndarray], datatypes: dict[str, str] | None) -> None:
        """Refuse, with what was expected, inputs the model cannot take."""
        for name in feeds:
            if name not in self.inputs:
                raise ClientError(400, f"unknown input {name!r}; this model takes: "
                                       + ", ".join(self.inputs))
        for name, spec in self.inputs.items():
            array = feeds.get(name)
            if array is None:
                raise ClientError(400, f"missing input {name!r} ({spec.datatype} {list(spec.shape)})")
            given = datatypes[name] if datatypes else None
            if given is not None and given != spec.datatype:
                raise ClientError(400, f"input {name!r}: got datatype {given}; expected {spec.datatype}")
            if len(array.shape) != len(spec.shape) or any(
                    want not in (-1, got) for want, got in zip(spec.shape, array.shape, strict=True)):
                raise ClientError(400, f"input {name!r}: got shape {list(array.shape)}; expected "
                                       f"{list(spec.shape)} (-1: any size)")

    def check_outputs(self, requested: list[str] | None) -> list[str]:
        if requested is None:
            return self.output_names
        for name in requested:
            if name not in self.outputs:
                raise ClientError(400, f"unknown output {name!r}; this model gives: "
                                       + ", ".join(self.outputs))
        return requested

    def run(self, feeds: dict[str, np.ndarray], names: list[str] | None = None) -> dict[str, np.ndarray]:
        wanted = names or self.output_names
        return dict(zip(wanted, self.session.run(wanted, feeds), strict=True))

    def warm_up(self) -> None:
        feeds = {}
        for name, spec in self.inputs.items():
            shape = [1 if d == -1 else d for d in spec.shape]
            if spec.datatype == "BYTES":
                feeds[name] = np.full(shape, "", dtype=object)
            else:
                from .protocol import DTYPES

                feeds[name] = np.zeros(shape, dtype=DTYPES[spec.datatype])
        self.session.run(None, feeds)


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
