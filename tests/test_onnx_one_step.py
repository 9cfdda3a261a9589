"""Bringing an ONNX file: one `register`, no sample, no `convert`, then `serve`; and a file
that is not ONNX refused before anything is stored. With the installed CLI, in a temp folder."""

from __future__ import annotations

import json
import subprocess
import urllib.request
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest

from .conftest import cli, installed_env, wait_http

SPEC = """\
apiVersion: mlops-iac/v1
project: {name: bring-onnx}
models:
  - name: reg
    framework: onnx
    source: model.onnx
targets:
  local: {kind: local}
deployments:
  - {model: reg, version: 1, target: local}
"""


@pytest.fixture
def onnx_project(tmp_path: Path) -> Path:
    from skl2onnx import to_onnx
    from sklearn.linear_model import LinearRegression

    rng = np.random.default_rng(1)
    x = rng.random((40, 3), dtype=np.float32)
    model = LinearRegression().fit(x, x @ np.array([1.0, 2.0, 3.0], dtype=np.float32))
    (tmp_path / "model.onnx").write_bytes(to_onnx(model, x[:1]).SerializeToString())
    import joblib

    joblib.dump(model, tmp_path / "model.joblib")
    (tmp_path / "mlops.yaml").write_text(SPEC)
    return tmp_path


def test_register_onnx_then_serve_without_convert_or_sample(onnx_project: Path) -> None:
    done = cli("register", "reg", "--file", "model.onnx", cwd=onnx_project)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "pinned reg@1 in mlops.lock" in done.stdout
    assert "no sample: 64 rows generated from the signature" in done.stdout  # said, not hidden
    assert "parity on 64 sample rows: passed" in done.stdout
    facts = json.loads(cli("lock", "show", "--json", cwd=onnx_project).stdout)["models"]["reg"]["versions"]["1"]
    assert facts["onnx"]["inputs"] == [{"name": "X", "datatype": "FP32", "shape": [-1, 3]}]
    assert facts["onnx"]["optimization"] == "extended" and facts["baseline"]["rows"] == 64

    # Profiling needs no sample either, and talks to the server in the model's own input name (X).
    profiled = cli("profile", "reg@1", "--quick", "--budget", "5", cwd=onnx_project)
    assert profiled.returncode == 0, profiled.stdout + profiled.stderr
    assert "no sample: 64 rows generated from the signature" in profiled.stdout
    figures = json.loads(cli("lock", "show", "--json", cwd=onnx_project).stdout)["models"]["reg"]["versions"]["1"]
    assert figures["profile"]["http"] and all(r["errors"] == 0 for r in figures["profile"]["http"])

    server = subprocess.Popen(
        ["mlops-iac", "serve", "--port", "0"],
        cwd=onnx_project,
        env=installed_env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert server.stdout is not None
        line = server.stdout.readline()
        assert line.startswith("serving reg@1 on http://127.0.0.1:"), line + server.stderr.read()
        url = line.split()[3]
        port = int(url.rsplit(":", 1)[1])
        assert port != 8080
        wait_http(f"{url}/v2/health/ready", timeout=60)
        rows = np.array([[0.1, 0.2, 0.3], [1.0, 0.5, 0.25]], dtype=np.float32)
        body = {"inputs": [{"name": "X", "datatype": "FP32", "shape": [2, 3], "data": rows.ravel().tolist()}]}
        request = urllib.request.Request(
            f"{url}/v2/models/reg/infer", data=json.dumps(body).encode(), headers={"Content-Type": "application/json"}
        )
        with urllib.request.urlopen(request, timeout=10) as response:
            answer = json.load(response)
        expected = ort.InferenceSession(str(onnx_project / "model.onnx")).run(None, {"X": rows})[0]
        np.testing.assert_allclose(
            np.array(answer["outputs"][0]["data"]).reshape(expected.shape), expected, rtol=1e-5, atol=1e-6
        )

        smoked = cli("smoke", "reg@1", "--url", url, cwd=onnx_project)  # no sample here either
        assert smoked.returncode == 0 and "smoke test passed" in smoked.stdout, smoked.stdout + smoked.stderr

        busy = cli("serve", "--port", str(port), cwd=onnx_project)  # the port the first server holds
        assert busy.returncode == 1 and "Traceback" not in busy.stderr
        assert busy.stderr.strip() == (
            f"error: cannot listen on 127.0.0.1:{port}: Address already in use; "
            "choose another port with --port (0 picks a free one)"
        )
        assert "serving" not in busy.stdout  # nothing announced that was not true
    finally:
        server.terminate()
        server.wait(timeout=60)


def test_register_refuses_bytes_that_are_not_onnx(onnx_project: Path) -> None:
    done = cli("register", "reg", "--file", "model.joblib", "--framework", "onnx", cwd=onnx_project)
    assert done.returncode == 1 and "Traceback" not in done.stderr
    assert "error: model.joblib is not an ONNX model" in done.stderr
    assert "--framework sklearn" in done.stderr
    assert json.loads(cli("models", "list", "--json", cwd=onnx_project).stdout) == []  # nothing stored
    # The model declares `framework: onnx`, so the same refusal without the flag.
    renamed = onnx_project / "other.bin"
    renamed.write_bytes(b"\x08\x01garbage that protobuf may half-parse")
    bad = cli("register", "reg", "--file", "other.bin", cwd=onnx_project)
    assert bad.returncode == 1 and "is not" in bad.stderr and "ONNX model" in bad.stderr
    assert not (onnx_project / "mlops.lock").exists()


def test_register_refuses_onnx_with_external_data(onnx_project: Path) -> None:
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    weights = numpy_helper.from_array(np.ones((3, 1), dtype=np.float32), "w")
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["X", "w"], ["y"])],
        "g",
        [helper.make_tensor_value_info("X", TensorProto.FLOAT, [None, 3])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [None, 1])],
        [weights],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    onnx.save(
        model,
        str(onnx_project / "split.onnx"),
        save_as_external_data=True,
        all_tensors_to_one_file=True,
        location="split.data",
        size_threshold=0,
    )
    done = cli("register", "reg", "--file", "split.onnx", cwd=onnx_project)
    assert done.returncode == 1 and "Traceback" not in done.stderr
    assert "in external data files; the registry stores one file per version" in done.stderr


def test_serve_prepares_an_onnx_version_that_lock_sync_pinned(onnx_project: Path) -> None:
    spec = onnx_project / "mlops.yaml"
    spec.rename(onnx_project / "later.yaml")  # registered before the project deployed it
    spec.write_text(SPEC.split("deployments:")[0])
    assert cli("register", "reg", "--file", "model.onnx", cwd=onnx_project).returncode == 0
    (onnx_project / "later.yaml").replace(spec)
    assert cli("lock", "sync", cwd=onnx_project).returncode == 0
    pinned = json.loads(cli("lock", "show", "--json", cwd=onnx_project).stdout)["models"]["reg"]["versions"]["1"]
    assert "onnx" in pinned  # prepared at register, before any pin: lock sync takes it from the registry
    done = cli("serve", "--write-config", "server.json", cwd=onnx_project)
    assert done.returncode == 0, done.stdout + done.stderr
    facts = json.loads(cli("lock", "show", "--json", cwd=onnx_project).stdout)["models"]["reg"]["versions"]["1"]
    config = json.loads((onnx_project / "server.json").read_text())
    assert config["models"][0]["digest"] == facts["onnx"]["digest"]
