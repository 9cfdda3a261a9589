"""The model server over real HTTP: protocol, clients, errors, auth, traffic, batching, drain."""

from __future__ import annotations

import gzip
import json
import signal
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from mlops_iac.convert.onnx_tools import run, session

from .server_fixtures import Models, Running, build_models, model_entry, running_server


@pytest.fixture(scope="module")
def models(tmp_path_factory: pytest.TempPathFactory) -> Models:
    return build_models(tmp_path_factory.mktemp("models"))


@pytest.fixture(scope="module")
def server(models: Models) -> Iterator[Running]:
    config = {"models": [model_entry(models, "iris"), model_entry(models, "cancer", 3)], "max_body_bytes": 64 * 1024}
    with running_server(models, config) as running:
        yield running


def local(models: Models, name: str, x: np.ndarray) -> list[np.ndarray]:
    return run(session((models.folder / f"{name}.onnx").read_bytes()), x)


@pytest.mark.parametrize("binary", [False, True])
def test_tritonclient_default_settings(server: Running, models: Models, binary: bool) -> None:
    import tritonclient.http as httpclient

    client = httpclient.InferenceServerClient(server.url)
    assert client.is_server_live() and client.is_server_ready() and client.is_model_ready("cancer")
    assert client.get_server_metadata()["extensions"] == [
        "binary_tensor_data",
        "classification",
        "model_configuration",
        "statistics",
    ]
    meta = client.get_model_metadata("cancer")
    assert meta["inputs"] == [{"name": "input", "datatype": "FP32", "shape": [-1, 30]}]
    x = models.cancer[:17]
    tensor = httpclient.InferInput("input", list(x.shape), "FP32")
    tensor.set_data_from_numpy(x, binary_data=binary)
    outputs = (
        None
        if binary
        else [
            httpclient.InferRequestedOutput("label", binary_data=False),
            httpclient.InferRequestedOutput("probabilities", binary_data=False),
        ]
    )
    result = client.infer("cancer", [tensor], outputs=outputs, request_id="abc")
    label, proba = local(models, "cancer", x)
    assert np.array_equal(result.as_numpy("label"), label)
    assert np.array_equal(result.as_numpy("probabilities"), proba)  # bit for bit
    assert result.get_response()["id"] == "abc" and result.get_response()["model_version"] == "3"


def test_routes_and_metadata(server: Running) -> None:
    assert server.json("GET", "/v2/health/live") == (200, {"live": True})
    assert server.json("GET", "/v2/health/ready") == (200, {"ready": True})
    status, meta = server.json("GET", "/v2/models/iris/versions/1")
    assert status == 200 and meta["versions"] == ["1"]
    assert [o["name"] for o in meta["outputs"]] == ["label", "probabilities"]
    assert server.json("GET", "/v2/models/iris/versions/1/ready") == (200, {"name": "iris", "ready": True})
    status, body = server.json("GET", "/v2/models/wine")
    assert status == 404 and "models: cancer, iris" in body["error"]
    status, body = server.json("GET", "/v2/models/iris/versions/9")
    assert status == 404 and "versions: 1" in body["error"]
    assert server.json("GET", "/v2/models/iris/infer")[0] == 405
    assert server.json("POST", "/v2/health/live", {})[0] == 405
    assert server.json("GET", "/nope")[0] == 404
    status, doc = server.json("GET", "/v2/openapi.json")
    assert status == 200 and "/v2/models/{name}/infer" in doc["paths"]


def infer_body(x: np.ndarray, name: str = "input", datatype: str = "FP32") -> dict[str, object]:
    return {"inputs": [{"name": name, "datatype": datatype, "shape": list(x.shape), "data": x.ravel().tolist()}]}


def test_json_inference_and_requested_outputs(server: Running, models: Models) -> None:
    x = models.iris[:3]
    body = infer_body(x)
    body["outputs"] = [{"name": "probabilities"}]
    status, doc = server.json("POST", "/v2/models/iris/infer", body)
    assert status == 200
    (out,) = doc["outputs"]
    assert out["name"] == "probabilities" and out["shape"] == [3, 3]
    np.testing.assert_array_equal(np.asarray(out["data"], np.float32).reshape(3, 3), local(models, "iris", x)[1])


def _bad(
    server: Running, body: bytes, headers: dict[str, str] | None = None, path: str = "/v2/models/iris/infer"
) -> tuple[int, str]:
    status, _, data = server.request("POST", path, body, headers)
    return status, json.loads(data)["error"]


@pytest.mark.parametrize(
    "body,fragment",
    [
        (b"{not json", "not valid JSON"),
        (b"[]", "JSON object"),
        (b'{"inputs": []}', "non-empty list"),
        (b'{"inputs": [{"name": "input", "datatype": "FP32", "shape": [1, 4], "data": [1, 2, 3]}]}', "needs 4 values"),
        (
            b'{"inputs": [{"name": "input", "datatype": "FP64", "shape": [1, 4], "data": [1, 2, 3, 4]}]}',
            "got datatype FP64; expected FP32",
        ),
        (
            b'{"inputs": [{"name": "input", "datatype": "FP32", "shape": [1, 5], "data": [1, 2, 3, 4, 5]}]}',
            "got shape [1, 5]; expected [-1, 4]",
        ),
        (b'{"inputs": [{"name": "input", "datatype": "FP32", "shape": [4], "data": [1, 2, 3, 4]}]}', "got shape [4]"),
        (
            b'{"inputs": [{"name": "x", "datatype": "FP32", "shape": [1, 4], "data": [1, 2, 3, 4]}]}',
            "unknown input 'x'; this model takes: input",
        ),
        (
            b'{"inputs": [{"name": "input", "datatype": "FP32", "shape": [1, 4], "data": ["a", "b", "c", "d"]}]}',
            "holds strings",
        ),
        (
            b'{"inputs": [{"name": "input", "datatype": "FLOAT", "shape": [1, 4], "data": [1, 2, 3, 4]}]}',
            "is not one of",
        ),
        (b'{"inputs": [{"name": "input", "datatype": "FP32", "shape": [1, -4], "data": [1]}]}', "non-negative"),
        (b'{"inputs": [{"name": "input", "datatype": "FP32", "shape": [2, 4], "data": [[1, 2], [3]]}]}', "ragged"),
        (
            b'{"inputs": [{"name": "input", "datatype": "FP32", "shape": [1, 4], "data": [1, 2, 3, 4]}], '
            b'"outputs": [{"name": "nope"}]}',
            "unknown output 'nope'; this model gives: label, probabilities",
        ),
        (b'{"inputs": [{"name": "input", "datatype": "FP32", "shape": [1, 4]}]}', "neither 'data'"),
        (
            b'{"id": 7, "inputs": [{"name": "input", "datatype": "FP32", "shape": [1, 4], "data": [1, 2, 3, 4]}]}',
            "'id' must be a string",
        ),
    ],
)
def test_bad_requests_get_4xx_with_the_expectation(server: Running, body: bytes, fragment: str) -> None:
    status, error = _bad(server, body)
    assert status == 400 and fragment in error, error
    assert server.json("GET", "/v2/health/ready")[0] == 200


def test_binary_extension_errors(server: Running) -> None:
    head = json.dumps(
        {"inputs": [{"name": "input", "datatype": "FP32", "shape": [1, 4], "parameters": {"binary_data_size": 16}}]}
    ).encode()
    ok = np.ones(4, np.float32).tobytes()
    status, _, _ = server.request(
        "POST", "/v2/models/iris/infer", head + ok, {"Inference-Header-Content-Length": str(len(head))}
    )
    assert status == 200
    status, error = _bad(server, head + ok[:10], {"Inference-Header-Content-Length": str(len(head))})
    assert status == 400 and "truncated binary data: 16 bytes announced, 10 sent" in error
    status, error = _bad(server, head + ok, {"Inference-Header-Content-Length": "99999"})
    assert status == 400 and "Inference-Header-Content-Length is 99999" in error
    status, error = _bad(server, head + ok + b"xx", {"Inference-Header-Content-Length": str(len(head))})
    assert status == 400 and "binary part holds 18 bytes" in error


def test_body_limit_gzip_and_unknown_model(server: Running, models: Models) -> None:
    big = json.dumps(infer_body(np.zeros((4000, 4), np.float32))).encode()
    assert len(big) > 64 * 1024
    status, error = _bad(server, big)
    assert status == 413 and "limit" in error
    zipped = gzip.compress(json.dumps(infer_body(models.iris[:2])).encode())
    status, _, data = server.request("POST", "/v2/models/iris/infer", zipped, {"Content-Encoding": "gzip"})
    assert status == 200 and json.loads(data)["outputs"][0]["shape"] == [2]
    bomb = gzip.compress(b" " * (2 * 1024 * 1024))
    status, error = _bad(server, bomb, {"Content-Encoding": "gzip"})
    assert status == 413
    status, error = _bad(server, zipped, {"Content-Encoding": "br"})
    assert status == 415
    status, error = _bad(server, big[:10], path="/v2/models/wine/infer")
    assert status == 404


def test_metrics_count_requests(server: Running, models: Models) -> None:
    server.json("POST", "/v2/models/iris/infer", infer_body(models.iris[:1]))
    _, _, text = server.request("GET", "/metrics")
    metrics = text.decode()
    assert 'mlops_requests_total{model="iris",status="200",version="1"}' in metrics
    assert 'mlops_requests_total{model="iris",status="400",version="1"}' in metrics
    for name in (
        "mlops_request_seconds_bucket",
        "mlops_inference_seconds_bucket",
        "mlops_batch_size_bucket",
        "mlops_queue_seconds",
        "mlops_collection_dropped_total",
        "mlops_ready 1.0",
    ):
        assert name in metrics


def test_auth_key(models: Models) -> None:
    config = {"models": [model_entry(models, "iris")], "auth": True}
    with running_server(models, config, env={"MLOPS_IAC_API_KEY": "s3cret"}) as server:
        assert server.json("GET", "/v2/health/ready")[0] == 200  # health stays open
        status, body = server.json("POST", "/v2/models/iris/infer", infer_body(models.iris[:1]))
        assert status == 401 and "bearer token" in body["error"]
        assert server.json("GET", "/v2/models/iris", Authorization="Bearer wrong")[0] == 401
        status, _ = server.json(
            "POST", "/v2/models/iris/infer", infer_body(models.iris[:1]), Authorization="Bearer s3cret"
        )
        assert status == 200


def test_traffic_weights_split_unversioned_requests(models: Models) -> None:
    config = {"models": [model_entry(models, "iris", 1, weight=80), model_entry(models, "iris", 2, weight=20)]}
    with running_server(models, config) as server:
        seen = {"1": 0, "2": 0}
        for _ in range(200):
            seen[server.json("POST", "/v2/models/iris/infer", infer_body(models.iris[:1]))[1]["model_version"]] += 1
        assert 120 <= seen["1"] <= 190 and seen["2"] >= 10, seen
        assert (
            server.json("POST", "/v2/models/iris/versions/2/infer", infer_body(models.iris[:1]))[1]["model_version"]
            == "2"
        )


def test_dynamic_batching_merges_and_splits(models: Models) -> None:
    config = {"models": [model_entry(models, "cancer", max_batch_size=64, max_delay_ms=20)]}
    with running_server(models, config) as server:
        results: dict[int, object] = {}

        def call(i: int) -> None:
            x = models.cancer[i * 3 : i * 3 + 3]
            results[i] = server.json("POST", "/v2/models/cancer/infer", infer_body(x))

        threads = [threading.Thread(target=call, args=(i,)) for i in range(16)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        for i in range(16):
            status, doc = results[i]  # type: ignore[misc]
            assert status == 200
            label, proba = local(models, "cancer", models.cancer[i * 3 : i * 3 + 3])
            assert doc["outputs"][0]["data"] == label.tolist()
            np.testing.assert_allclose(np.asarray(doc["outputs"][1]["data"]).reshape(3, 2), proba, rtol=1e-6)
        _, _, text = server.request("GET", "/metrics")
        merged = [line for line in text.decode().splitlines() if line.startswith('mlops_batch_size_bucket{le="2.0"')]
        total = [line for line in text.decode().splitlines() if line.startswith("mlops_batch_size_count")]
        assert float(merged[0].split()[-1]) < float(total[0].split()[-1])  # some batches held > 2 rows


def test_data_collection_writes_json_lines(models: Models, tmp_path: Path) -> None:
    config = {
        "models": [model_entry(models, "iris")],
        "collection": {"enabled": True, "sample_rate": 1.0, "sink": "file", "path": "collected/r.jsonl"},
    }
    with running_server(models, config) as server:
        for i in range(5):
            server.json("POST", "/v2/models/iris/infer", {**infer_body(models.iris[i : i + 1]), "id": f"r{i}"})
        server.process.send_signal(signal.SIGTERM)
        assert server.process.wait(30) in (0, -signal.SIGTERM)  # uvicorn re-raises SIGTERM
    lines = (models.folder / "collected/r.jsonl").read_text().splitlines()
    records = [json.loads(line) for line in lines]
    assert [r["id"] for r in records] == [f"r{i}" for i in range(5)]
    np.testing.assert_array_equal(np.asarray(records[0]["inputs"]["input"], np.float32), models.iris[:1])
    assert set(records[0]["outputs"]) == {"label", "probabilities"} and records[0]["latencyMs"] > 0


def test_handler_pre_and_post_processing(models: Models) -> None:
    (models.folder / "handler.py").write_text(
        "import numpy as np\n"
        "def preprocess(request):\n"
        "    x = request.inputs['cm']\n"
        "    if x.shape[-1] != 4: raise ValueError('expected 4 measurements in cm')\n"
        "    return {'input': (x * 10).astype(np.float32) / 10}\n"
        "def postprocess(outputs):\n"
        "    names = np.array([b'setosa', b'versicolor', b'virginica'], dtype=object)\n"
        "    return {'species': names[outputs['label']]}\n"
    )
    config = {"models": [model_entry(models, "iris", handler="handler.py")]}
    with running_server(models, config) as server:
        status, doc = server.json("POST", "/v2/models/iris/infer", infer_body(models.iris[[0, 149]], "cm"))
        assert status == 200, doc
        assert doc["outputs"] == [
            {"name": "species", "datatype": "BYTES", "shape": [2], "data": ["setosa", "virginica"]}
        ]
        status, doc = server.json("POST", "/v2/models/iris/infer", infer_body(np.ones((1, 3), np.float32), "cm"))
        assert status == 400 and "expected 4 measurements" in doc["error"]


def test_an_answer_that_cannot_be_encoded_is_a_500_and_counted_as_one(models: Models) -> None:
    """A handler whose outputs have no v2 datatype (complex64) fails after the model ran: the
    client gets 500 and the metrics say 500, not 200, on the direct path and on the ASGI path
    (a gzip body takes it), so a failing canary shows in the error rate a rollout reads."""
    (models.folder / "complex_handler.py").write_text(
        "import numpy as np\n"
        "def postprocess(outputs):\n"
        "    return {k: np.asarray(v).astype(np.complex64) for k, v in outputs.items()}\n"
    )
    config = {"models": [model_entry(models, "iris", handler="complex_handler.py")]}
    with running_server(models, config) as server:
        body = json.dumps(infer_body(models.iris[:1])).encode()
        status, _, _ = server.request("POST", "/v2/models/iris/infer", body)
        assert status == 500
        zipped = gzip.compress(body)
        status, _, _ = server.request("POST", "/v2/models/iris/infer", zipped, {"Content-Encoding": "gzip"})
        assert status == 500
        _, _, text = server.request("GET", "/metrics")
        counts = [line for line in text.decode().splitlines() if line.startswith("mlops_requests_total{")]
        assert counts == [
            'mlops_requests_total{model="iris",status="200",version="1"} 0.0',
            'mlops_requests_total{model="iris",status="500",version="1"} 2.0',
        ]


def test_not_ready_until_loaded_and_drains_on_sigterm(models: Models) -> None:
    (models.folder / "slow_handler.py").write_text(
        "import time\ntime.sleep(2)  # a slow load\n"
        "def preprocess(request):\n"
        "    time.sleep(1.5)  # a slow request, in flight when SIGTERM arrives\n"
        "    return dict(request.inputs)\n"
    )
    config = {"models": [model_entry(models, "iris", handler="slow_handler.py")]}
    with running_server(models, config, wait_ready=False) as server:
        assert server.json("GET", "/v2/health/ready") == (503, {"ready": False})
        assert server.json("GET", "/v2/health/live")[0] == 200
        deadline = time.monotonic() + 30
        while server.json("GET", "/v2/health/ready")[0] != 200:
            assert time.monotonic() < deadline
            time.sleep(0.1)
        result: list[int] = []
        worker = threading.Thread(
            target=lambda: result.append(server.json("POST", "/v2/models/iris/infer", infer_body(models.iris[:1]))[0])
        )
        worker.start()
        time.sleep(0.5)
        server.process.send_signal(signal.SIGTERM)
        worker.join(10)
        assert result == [200]  # the request in flight finished
        assert server.process.wait(30) in (0, -signal.SIGTERM)  # uvicorn re-raises SIGTERM


def test_refuses_a_model_that_does_not_match_its_digest(models: Models) -> None:
    import subprocess
    import sys

    entry = model_entry(models, "iris")
    entry["digest"] = "sha256:" + "0" * 64
    settings = models.folder / "tampered.json"
    settings.write_text(json.dumps({"models": [entry]}))
    from .conftest import free_port

    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "mlops_iac.serving",
            "--config",
            str(settings),
            "--host",
            "127.0.0.1",
            "--port",
            str(free_port()),
        ],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 1
    assert "does not match its pinned digest" in done.stderr
