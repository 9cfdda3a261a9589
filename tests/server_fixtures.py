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
        report = convert_artifact("sklearn", folder / f"{name}.joblib", features[:50],
                                  Options(measure_speed=False))
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

    def request(self, method: str, path: str, body: bytes | None = None,
                headers: dict[str, str] | None = None) -> tuple[int, dict[str, str], bytes]:
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
def running_server(models: Models, config: dict[str, Any], env: dict[str, str] | None = None,
                   wait_ready: bool = True, port: int | None = None) -> Iterator[Running]:
    ServerConfig.model_validate(config)  # fail early, in the test, on a bad fixture
    settings = models.folder / f"server-{time.monotonic_ns()}.json"
    settings.write_text(json.dumps(config))
    port = port or free_port()
    log = settings.with_suffix(".log")
    with open(log, "wb") as out:
        process = subprocess.Popen(
            [sys.executable, "-m", "mlops_iac.serving", "--config", str(settings), "--host", "127.0.0.1",
             "--port", str(port)], stdout=out, stderr=subprocess.STDOUT,
            env={**os.environ, **(env or {})})
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
