"""Real model servers for the tests: real ONNX models, a real process, real HTTP on 127.0.0.1."""

from __future__ import annotations

import http.client
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import joblib
import numpy as np
from sklearn.datasets import load_breast_cancer, load_iris

from mlops_iac.convert import Options, convert_artifact
from mlops_iac.serving.config import ServerConfig
from mlops_iac.serving.runtime import sha256_of

from .conftest import free_port, wait_http


@dataclass
class Models:
    folder: Path
    iris: np.ndarray  # float32 features
    cancer: np.ndarray


def build_models(folder: Path) -> Models:
    """Two real ONNX models: a scaled logistic regression on iris, a random forest on cancer."""
    from sklearn.ensemble import RandomForestClassifier
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    folder.mkdir(parents=True, exist_ok=True)
    iris_x, iris_y = load_iris(return_X_y=True)
    cancer_x, cancer_y = load_breast_cancer(return_X_y=True)
    iris_x, cancer_x = iris_x.astype(np.float32), cancer_x.astype(np.float32)
    trained = {
        "iris": (make_pipeline(StandardScaler(), LogisticRegression(max_iter=500)).fit(iris_x, iris_y), iris_x),
        "cancer": (RandomForestClassifier(30, max_depth=6, random_state=0).fit(cancer_x, cancer_y), cancer_x),
    }
    for name, (model, features) in trained.items():
        joblib.dump(model, folder / f"{name}.joblib")
        report = convert_artifact("sklearn", folder / f"{name}.joblib", features[:50], Options(measure_speed=False))
        assert report.parity.passed
        (folder / f"{name}.onnx").write_bytes(report.model)
    return Models(folder, iris_x, cancer_x)


def model_entry(models: Models, name: str, version: int = 1, **extra: Any) -> dict[str, Any]:
    path = models.folder / f"{name}.onnx"
    return {"name": name, "version": version, "path": path.name, "digest": sha256_of(path), **extra}


@dataclass
class Running:
    url: str
    port: int
    process: subprocess.Popen[bytes]
    log: Path

    def connection(self) -> http.client.HTTPConnection:
        return http.client.HTTPConnection("127.0.0.1", self.port, timeout=30)

    def request(
        self, method: str, path: str, body: bytes | None = None, headers: dict[str, str] | None = None
    ) -> tuple[int, dict[str, str], bytes]:
        conn = self.connection()
        try:
            conn.request(method, path, body=body, headers=headers or {})
            response = conn.getresponse()
            return response.status, dict(response.getheaders()), response.read()
        finally:
            conn.close()

    def json(self, method: str, path: str, doc: Any = None, **headers: str) -> tuple[int, Any]:
        body = json.dumps(doc).encode() if doc is not None else None
        status, _, data = self.request(method, path, body, headers)
        return status, json.loads(data) if data else None

    def rss_kib(self) -> int:
        for line in Path(f"/proc/{self.process.pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
        raise AssertionError("no VmRSS")


@contextmanager
def running_server(
    models: Models,
    config: dict[str, Any],
    env: dict[str, str] | None = None,
    wait_ready: bool = True,
    port: int | None = None,
) -> Iterator[Running]:
    ServerConfig.model_validate(config)  # fail early, in the test, on a bad fixture
    settings = models.folder / f"server-{time.monotonic_ns()}.json"
    settings.write_text(json.dumps(config))
    port = port or free_port()
    log = settings.with_suffix(".log")
    with open(log, "wb") as out:
        process = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "mlops_iac.serving",
                "--config",
                str(settings),
                "--host",
                "127.0.0.1",
                "--port",
                str(port),
            ],
            stdout=out,
            stderr=subprocess.STDOUT,
            env={**os.environ, **(env or {})},
        )
        running = Running(f"127.0.0.1:{port}", port, process, log)
        try:
            wait_http(f"http://127.0.0.1:{port}/v2/health/live", timeout=60)
            if wait_ready:
                deadline = time.monotonic() + 60
                while running.request("GET", "/v2/health/ready")[0] != 200:
                    assert time.monotonic() < deadline, log.read_text()
                    time.sleep(0.05)
            yield running
        finally:
            if process.poll() is None:
                process.send_signal(signal.SIGTERM)
                try:
                    process.wait(30)
                except subprocess.TimeoutExpired:
                    process.kill()


# --- models for the datatype, string and batching tests -------------------------------------

V2_TO_ONNX = {
    "BOOL": 9,
    "UINT8": 2,
    "UINT16": 4,
    "UINT32": 12,
    "UINT64": 13,
    "INT8": 3,
    "INT16": 5,
    "INT32": 6,
    "INT64": 7,
    "FP16": 10,
    "FP32": 1,
    "FP64": 11,
    "BYTES": 8,
}


def _save(graph: Any, path: Path, metadata: dict[str, str] | None = None) -> Path:
    import onnx
    from onnx import helper

    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    for key, value in (metadata or {}).items():
        entry = model.metadata_props.add()
        entry.key, entry.value = key, value
    onnx.checker.check_model(model)
    path.write_bytes(model.SerializeToString())
    return path


def identity_model(folder: Path) -> Path:
    """One Identity per v2 datatype: `x_<TYPE>` [-1] in, `y_<TYPE>` out."""
    from onnx import helper

    nodes, inputs, outputs = [], [], []
    for name, code in V2_TO_ONNX.items():
        inputs.append(helper.make_tensor_value_info(f"x_{name}", code, ["N"]))
        outputs.append(helper.make_tensor_value_info(f"y_{name}", code, ["N"]))
        nodes.append(helper.make_node("Identity", [f"x_{name}"], [f"y_{name}"]))
    return _save(helper.make_graph(nodes, "identity", inputs, outputs), folder / "identity.onnx")


def text_model(folder: Path) -> Path:
    """A string in, the same string out: `text` [-1] -> `echo` [-1]."""
    from onnx import TensorProto, helper

    graph = helper.make_graph(
        [helper.make_node("Identity", ["text"], ["echo"])],
        "text",
        [helper.make_tensor_value_info("text", TensorProto.STRING, ["N"])],
        [helper.make_tensor_value_info("echo", TensorProto.STRING, ["N"])],
    )
    return _save(graph, folder / "text.onnx")


TABLE = np.arange(40, dtype=np.float32).reshape(10, 4)


def multi_model(folder: Path) -> Path:
    """Three batched inputs, so that requests can disagree on rows and values can fail one run:
    y = concat(2a, b) per row; g = TABLE[i] (an index outside 0..9 fails the run)."""
    from onnx import TensorProto, helper, numpy_helper

    graph = helper.make_graph(
        [
            helper.make_node("Constant", [], ["two"], value=numpy_helper.from_array(np.float32(2), "two")),
            helper.make_node("Mul", ["a", "two"], ["a2"]),
            helper.make_node("Concat", ["a2", "b"], ["y"], axis=1),
            helper.make_node("Constant", [], ["table"], value=numpy_helper.from_array(TABLE, "table")),
            helper.make_node("Gather", ["table", "i"], ["g"], axis=0),
        ],
        "multi",
        [
            helper.make_tensor_value_info("a", TensorProto.FLOAT, ["N", 3]),
            helper.make_tensor_value_info("b", TensorProto.FLOAT, ["N", 2]),
            helper.make_tensor_value_info("i", TensorProto.INT64, ["N", 1]),
        ],
        [
            helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 5]),
            helper.make_tensor_value_info("g", TensorProto.FLOAT, ["N", 1, 4]),
        ],
    )
    return _save(graph, folder / "multi.onnx")


def bf16_model(folder: Path) -> Path:
    from onnx import TensorProto, helper

    graph = helper.make_graph(
        [helper.make_node("Cast", ["x"], ["y"], to=TensorProto.FLOAT)],
        "bf16",
        [helper.make_tensor_value_info("x", TensorProto.BFLOAT16, ["N", 2])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 2])],
    )
    return _save(graph, folder / "bf16.onnx")


COLORS = ["red", "green", "blue", "héllo wörld", "紫"]


def categorical_model(folder: Path) -> tuple[Path, np.ndarray]:
    """A classifier trained on strings: OneHotEncoder + LogisticRegression on a `color` column,
    converted by skl2onnx with a string input; the class labels go into the model's metadata."""
    from skl2onnx import convert_sklearn
    from skl2onnx.common.data_types import StringTensorType
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import OneHotEncoder

    rng = np.random.default_rng(0)
    colors = np.asarray(rng.choice(COLORS, size=300), dtype=object).reshape(-1, 1)
    target = np.asarray([COLORS.index(c) % 3 for c in colors[:, 0]])
    target[rng.random(300) < 0.1] = 0  # noise, so the probabilities are not all certain
    pipe = make_pipeline(OneHotEncoder(handle_unknown="ignore"), LogisticRegression(max_iter=500))
    pipe.fit(colors, target)
    onnx_model = convert_sklearn(
        pipe,
        initial_types=[("color", StringTensorType([None, 1]))],
        options={id(pipe.steps[-1][1]): {"zipmap": False}},
        target_opset=17,
    )
    entry = onnx_model.metadata_props.add()
    entry.key, entry.value = "labels", json.dumps(["zero", "one", "two"])
    path = folder / "colors.onnx"
    path.write_bytes(onnx_model.SerializeToString())
    return path, colors
