"""Drift per named column of a DataFrame pipeline, end to end as a user crosses it: train on
scikit-learn's wine data with string columns (tests/tabular_data.py), register, convert with a
Parquet sample, `mlops-iac serve` with collection on, send one tensor per column over HTTP (strings
as BYTES), stop the server, `mlops-iac monitor drift`. The own sample gives PSI 0 in every column,
the string ones included; a string column whose categories shift, or that gains a category the
baseline never had, drifts alone and is named, with its new categories counted."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import urllib.request
from pathlib import Path
from typing import Any

import joblib
import pytest

from .conftest import free_port, wait_http
from .tabular_data import pipeline, wine_frame

MLOPS_IAC = [sys.executable, "-m", "mlops_iac"]
V2 = {"f": "FP32", "i": "INT64", "O": "BYTES"}


@pytest.fixture(scope="module")
def project(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Any]:
    from click.testing import CliRunner
    from sklearn.linear_model import LogisticRegression

    from mlops_iac.cli import main

    folder = tmp_path_factory.mktemp("wine")
    frame, labels = wine_frame()
    joblib.dump(pipeline(LogisticRegression(max_iter=5000)).fit(frame, labels), folder / "model.joblib")
    sample = frame.dropna().reset_index(drop=True)  # JSON requests carry no NaN
    sample.to_parquet(folder / "sample.parquet", index=False)
    (folder / "mlops.yaml").write_text("""\
apiVersion: mlops-iac/v1
project: {name: drift-wine}
registry: {backend: local, path: .mlops/registry}
models:
  - {name: wine, framework: sklearn, source: model.joblib, sample: sample.parquet}
targets:
  local: {kind: local, port: 8080}
deployments:
  - {model: wine, version: 1, target: local}
monitoring:
  dataCollection:
    enabled: true
    sampleRate: 1.0
    sink: {kind: file, path: collected/requests.jsonl}
""")
    cwd = os.getcwd()
    os.chdir(folder)
    try:
        for args in (["register", "wine", "--file", "model.joblib"], ["convert", "wine@1", "--no-speed"]):
            result = CliRunner().invoke(main, args)
            assert result.exit_code == 0, result.output
    finally:
        os.chdir(cwd)
    return folder, sample


def serve_and_send(folder: Path, rows: Any, per_request: int = 8) -> Path:
    """The rows as v2 requests, one tensor per column of shape [n, 1]."""
    collected = folder / "collected/requests.jsonl"
    collected.unlink(missing_ok=True)
    port = free_port()
    log = folder / "serve.log"
    with open(log, "wb") as out:
        server = subprocess.Popen(
            [*MLOPS_IAC, "serve", "--port", str(port)], cwd=folder, stdout=out, stderr=subprocess.STDOUT
        )
    try:
        url = f"http://127.0.0.1:{port}"
        wait_http(f"{url}/v2/health/ready", timeout=60)
        for i in range(0, len(rows), per_request):
            chunk = rows.iloc[i : i + per_request]
            body = {
                "inputs": [
                    {
                        "name": name,
                        "datatype": V2[chunk[name].dtype.kind],
                        "shape": [len(chunk), 1],
                        "data": chunk[name].tolist(),
                    }
                    for name in chunk.columns
                ]
            }
            request = urllib.request.Request(
                f"{url}/v2/models/wine/infer",
                data=json.dumps(body).encode(),
                method="POST",
                headers={"Content-Type": "application/json"},
            )
            with urllib.request.urlopen(request, timeout=30) as response:
                assert response.status == 200
    finally:
        server.send_signal(signal.SIGTERM)
        assert server.wait(30) in (0, -signal.SIGTERM), log.read_text()
    return collected


def drift(folder: Path, collected: Path) -> tuple[int, dict[str, dict[str, Any]], str]:
    done = subprocess.run(
        [*MLOPS_IAC, "monitor", "drift", "wine@1", "--collected", str(collected), "--json"],
        cwd=folder,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode in (0, 3), done.stdout + done.stderr
    report = json.loads(done.stdout)
    return done.returncode, {c["name"]: c for c in report["columns"]}, done.stderr


def inputs(columns: dict[str, dict[str, Any]], sample: Any) -> dict[str, float]:
    psi = {name: columns[name]["psi"] for name in sample.columns}
    print("\n" + ", ".join(f"{k}={v:.4f}" for k, v in psi.items()))  # for the record (-s)
    return psi


def test_the_own_sample_gives_psi_0_in_every_column_strings_included(project: tuple[Path, Any]) -> None:
    folder, sample = project
    status, columns, _ = drift(folder, serve_and_send(folder, sample))
    assert status == 0
    assert all(v == 0.0 for v in inputs(columns, sample).values())
    for name in ("region", "cask"):
        assert columns[name]["kind"] == "string" and columns[name]["count"] == len(sample)
        assert columns[name]["new_categories"] == 0 and columns[name]["new_rows"] == 0


def test_a_dominant_category_drifts_in_its_column_alone(project: tuple[Path, Any]) -> None:
    folder, sample = project
    shifted = sample.copy()
    shifted.loc[shifted.index[::4].union(shifted.index[1::4]), "region"] = "coast"  # half the rows, from ~10%
    status, columns, stderr = drift(folder, serve_and_send(folder, shifted))
    psi = inputs(columns, sample)
    assert status == 3 and psi["region"] > 0.2, psi
    assert {k for k, v in psi.items() if v != 0.0} == {"region"}, psi
    assert columns["region"]["new_categories"] == 0  # a known category, only more of it
    assert "region" in stderr and "cask" not in stderr


def test_a_new_category_is_counted_and_drifts(project: tuple[Path, Any]) -> None:
    folder, sample = project
    shifted = sample.copy()
    shifted.loc[shifted.index[::3], "cask"] = "clay"  # a cask type the training data never had
    status, columns, stderr = drift(folder, serve_and_send(folder, shifted))
    psi = inputs(columns, sample)
    assert status == 3 and psi["cask"] > 0.2, psi
    assert {k for k, v in psi.items() if v != 0.0} == {"cask"}, psi
    cask = columns["cask"]
    assert (cask["new_categories"], cask["new_rows"], cask["new_examples"]) == (1, len(shifted.index[::3]), ["clay"])
    assert "cask (1 new categories in" in stderr
    table = subprocess.run(
        [
            *MLOPS_IAC,
            "monitor",
            "drift",
            "wine@1",
            "--collected",
            str(folder / "collected/requests.jsonl"),
            "--report",
            "drift",
        ],
        cwd=folder,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert table.returncode == 3
    assert f"1 in {len(shifted.index[::3])} rows ('clay')" in table.stdout, table.stdout
    cask_line = next(
        line for line in (folder / "drift/report.md").read_text().splitlines() if line.startswith("| cask |")
    )
    assert f"| 1 in {len(shifted.index[::3])} rows ('clay') | **drift** |" in cask_line
