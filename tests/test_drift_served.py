"""Drift end to end, as a user crosses it: train on data scikit-learn ships, register, convert,
`mlops-iac serve` with collection on, send rows over HTTP, stop the server, `mlops-iac monitor
drift` on what it collected. The version's own sample gives no drift (PSI exactly 0 in every
column); the same rows with one feature shifted drift in that column and no other input.

Datasets: iris (one-decimal values float32 cannot hold exactly, many ties), digits (integer
pixel values 0-16, and columns of three distinct values), breast cancer (continuous).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import joblib
import numpy as np
import pytest

from .conftest import QUICKSTART, free_port, wait_http

MLOPS_IAC = [sys.executable, "-m", "mlops_iac"]


@dataclass
class Project:
    folder: Path
    name: str
    sample: np.ndarray  # float32, what convert made the baseline of
    labels: np.ndarray  # the true classes of the sample rows


def _train(name: str) -> tuple[Any, np.ndarray, np.ndarray]:
    from sklearn.datasets import load_breast_cancer, load_digits, load_iris
    from sklearn.ensemble import RandomForestClassifier
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    if name == "iris":
        x, y = load_iris(return_X_y=True)
        model = make_pipeline(StandardScaler(), LogisticRegression(max_iter=500))
    elif name == "digits":
        x, y = load_digits(return_X_y=True)  # all 1,797 rows: pixel 8 has three values in them
        model = make_pipeline(StandardScaler(), LogisticRegression(max_iter=300))
    else:
        x, y = load_breast_cancer(return_X_y=True)
        x, y = x[:300], y[:300]
        model = RandomForestClassifier(20, max_depth=5, random_state=0)
    x = x.astype(np.float32)
    return model.fit(x, y), x, y


def make_project(folder: Path, name: str) -> Project:
    from click.testing import CliRunner

    from mlops_iac.cli import main

    folder.mkdir(parents=True, exist_ok=True)
    model, sample, labels = _train(name)
    joblib.dump(model, folder / "model.joblib")
    np.save(folder / "sample.npy", sample)
    (folder / "mlops.yaml").write_text(f"""\
apiVersion: mlops-iac/v1
project: {{name: drift-{name}}}
registry: {{backend: local, path: .mlops/registry}}
models:
  - {{name: {name}, framework: sklearn, source: model.joblib, sample: sample.npy}}
targets:
  local: {{kind: local, port: 8080}}
deployments:
  - {{model: {name}, version: 1, target: local}}
monitoring:
  dataCollection:
    enabled: true
    sampleRate: 1.0
    sink: {{kind: file, path: collected/requests.jsonl}}
""")
    cwd = os.getcwd()
    os.chdir(folder)
    try:
        runner = CliRunner()
        for args in (["register", name, "--file", "model.joblib"], ["convert", f"{name}@1", "--no-speed"]):
            result = runner.invoke(main, args)
            assert result.exit_code == 0, result.output
    finally:
        os.chdir(cwd)
    return Project(folder, name, sample, labels)


def serve_and_send(project: Project, rows: np.ndarray, per_request: int = 8) -> Path:
    """`mlops-iac serve` with collection on; the rows as v2 requests; a clean stop (SIGTERM
    drains and writes what the collector holds). Returns the collected file."""
    collected = project.folder / "collected/requests.jsonl"
    collected.unlink(missing_ok=True)
    port = free_port()
    log = project.folder / "serve.log"
    with open(log, "wb") as out:
        server = subprocess.Popen(
            [*MLOPS_IAC, "serve", "--port", str(port)], cwd=project.folder, stdout=out, stderr=subprocess.STDOUT
        )
    try:
        url = f"http://127.0.0.1:{port}"
        wait_http(f"{url}/v2/health/ready", timeout=60)
        for i in range(0, len(rows), per_request):
            chunk = rows[i : i + per_request]
            body = {
                "inputs": [
                    {
                        "name": "input",
                        "datatype": "FP32",
                        "shape": list(chunk.shape),
                        "data": chunk.reshape(-1).tolist(),
                    }
                ]
            }
            request = urllib.request.Request(
                f"{url}/v2/models/{project.name}/infer",
                data=json.dumps(body).encode(),
                method="POST",
                headers={"Content-Type": "application/json"},
            )
            with urllib.request.urlopen(request, timeout=30) as response:
                assert response.status == 200
    finally:
        server.send_signal(signal.SIGTERM)
        assert server.wait(30) in (0, -signal.SIGTERM), log.read_text()  # uvicorn re-raises SIGTERM once drained
    return collected


def drift(project: Project, collected: Path) -> tuple[int, dict[str, float], str]:
    done = subprocess.run(
        [*MLOPS_IAC, "monitor", "drift", f"{project.name}@1", "--collected", str(collected), "--json"],
        cwd=project.folder,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode in (0, 3), done.stdout + done.stderr
    report = json.loads(done.stdout)
    assert report["records"] > 0
    return done.returncode, {c["name"]: c["psi"] for c in report["columns"]}, done.stderr


def report(title: str, psi: dict[str, float]) -> None:
    """The PSI per column, printed for the record (run with -s to see it)."""
    print(f"\n{title}: " + ", ".join(f"{k}={v:.4f}" for k, v in psi.items()))


def inputs(psi: dict[str, float]) -> dict[str, float]:
    return {k: v for k, v in psi.items() if k.startswith("input[")}


@pytest.fixture(scope="module", params=["iris", "digits", "cancer"])
def project(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Project:
    return make_project(tmp_path_factory.mktemp(request.param), request.param)


def _shift_iris(x: np.ndarray) -> np.ndarray:
    x[:, 2] += 1.0  # petal length, one centimetre longer
    return x


def _shift_pixel_8(x: np.ndarray) -> np.ndarray:
    x[::4, 8] = 2.0  # a column of three distinct values (0, 1, 2), compared as categories
    return x


def _shift_pixel_20(x: np.ndarray) -> np.ndarray:
    x[:, 20] = np.minimum(x[:, 20] + 3, 16)  # integer values 0-16, three levels brighter
    return x


def _shift_cancer(x: np.ndarray) -> np.ndarray:
    x[:, 0] *= 1.3  # mean radius, 30% larger
    return x


SHIFTS: dict[str, list[tuple[int, Callable[[np.ndarray], np.ndarray]]]] = {
    "iris": [(2, _shift_iris)],
    "digits": [(8, _shift_pixel_8), (20, _shift_pixel_20)],
    "cancer": [(0, _shift_cancer)],
}


def test_the_own_sample_through_the_server_does_not_drift(project: Project) -> None:
    collected = serve_and_send(project, project.sample)
    status, psi, _ = drift(project, collected)
    report(f"{project.name}, own sample", psi)
    assert status == 0
    assert psi and all(v == 0.0 for v in psi.values()), psi  # exactly: the same values in the same bins


def test_one_shifted_feature_drifts_alone(project: Project) -> None:
    for column, shift in SHIFTS[project.name]:
        status, psi, stderr = drift(project, serve_and_send(project, shift(project.sample.copy())))
        report(f"{project.name}, input[{column}] shifted", psi)
        assert status == 3
        assert psi[f"input[{column}]"] > 0.2
        assert {k for k, v in inputs(psi).items() if v != 0.0} == {f"input[{column}]"}, inputs(psi)
        assert f"input[{column}]" in stderr


def test_a_changed_label_distribution_drifts_in_the_outputs(project: Project) -> None:
    """Only rows of one class: every input moves a little, the label moves most."""
    one_class = project.sample[project.labels == project.labels[0]]
    rows = np.tile(one_class, (int(np.ceil(len(project.sample) / len(one_class))), 1))
    status, psi, _ = drift(project, serve_and_send(project, rows))
    report(f"{project.name}, one class only", {k: v for k, v in psi.items() if not k.startswith("input[")})
    assert status == 3
    assert psi["label"] > 1.0, psi


def test_the_quickstart_readme_example_gives_no_drift(converted: Path) -> None:
    """README, Monitoring: serve, send the flowers and the sample, stop, `monitor drift`."""
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    with open(converted / "serve.log", "wb") as out:
        server = subprocess.Popen(
            [*MLOPS_IAC, "serve", "--port", str(port)], cwd=converted, stdout=out, stderr=subprocess.STDOUT
        )
    try:
        for args in ([url], [url, "sample.npy", "3"]):
            sent = subprocess.run(
                [sys.executable, str(QUICKSTART / "predict.py"), *args],
                cwd=converted,
                capture_output=True,
                text=True,
                timeout=120,
            )
            assert sent.returncode == 0, sent.stdout + sent.stderr
        assert "sent 135 rows of sample.npy (3 x 45)" in sent.stdout
    finally:
        server.send_signal(signal.SIGTERM)
        server.wait(30)
    done = subprocess.run(
        [*MLOPS_IAC, "monitor", "drift", "iris@1", "--collected", "collected/requests.jsonl"],
        cwd=converted,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert "136 records" in done.stdout and "no drift: every column under PSI 0.2" in done.stdout
