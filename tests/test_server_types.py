"""Every v2 datatype through the real server, strings reaching string models as text, the
Triton extensions (classification, model configuration, statistics) and HTTP details."""

from __future__ import annotations

import json
import shutil
import socket
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest

from mlops_iac.serving.protocol import bf16_bits

from .server_fixtures import (
    COLORS,
    Models,
    Running,
    bf16_model,
    categorical_model,
    identity_model,
    model_entry,
    running_server,
    text_model,
)


@pytest.fixture(scope="module")
def models(tmp_path_factory: pytest.TempPathFactory) -> Models:
    folder = tmp_path_factory.mktemp("typed")
    categorical_model(folder)
    shutil.copy(folder / "colors.onnx", folder / "colors_batched.onnx")
    identity_model(folder)
    text_model(folder)
    bf16_model(folder)
    return Models(folder, np.empty(0), np.empty(0))


@pytest.fixture(scope="module")
def server(models: Models) -> Iterator[Running]:
    config = {
        "models": [
            model_entry(models, "colors"),
            model_entry(models, "colors_batched", max_batch_size=8, max_delay_ms=1),
            model_entry(models, "identity"),
            model_entry(models, "text"),
            model_entry(models, "bf16"),
        ]
    }
    with running_server(models, config) as running:
        yield running


def in_process(models: Models, name: str, feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
    return ort.InferenceSession(str(models.folder / f"{name}.onnx")).run(None, feeds)  # type: ignore[no-any-return]


def colors_batch() -> np.ndarray:
    return np.asarray([*COLORS, "purple", "RED", ""], dtype=object).reshape(-1, 1)


@pytest.mark.parametrize("model", ["colors", "colors_batched"])
@pytest.mark.parametrize("binary", [False, True])
def test_a_model_trained_on_strings_answers_like_onnxruntime(
    server: Running, models: Models, model: str, binary: bool
) -> None:
    import tritonclient.http as httpclient

    client = httpclient.InferenceServerClient(server.url)
    x = colors_batch()
    tensor = httpclient.InferInput("color", list(x.shape), "BYTES")
    tensor.set_data_from_numpy(x, binary_data=binary)
    outputs = [httpclient.InferRequestedOutput(n, binary_data=binary) for n in ("label", "probabilities")]
    result = client.infer(model, [tensor], outputs=outputs)
    label, proba = in_process(models, "colors", {"color": x})
    assert np.array_equal(result.as_numpy("label"), label)
    assert np.array_equal(result.as_numpy("probabilities"), proba)  # bit for bit
    # and the answer is not the "every category unknown" one: known colours differ from unknown
    assert not np.array_equal(proba[0], proba[5])


def test_plain_json_strings(server: Running, models: Models) -> None:
    x = colors_batch()
    status, doc = server.json(
        "POST",
        "/v2/models/colors/infer",
        {"inputs": [{"name": "color", "datatype": "BYTES", "shape": list(x.shape), "data": [[c] for c in x[:, 0]]}]},
    )
    assert status == 200, doc
    proba = {o["name"]: o for o in doc["outputs"]}["probabilities"]
    assert np.array_equal(
        np.asarray(proba["data"], dtype=np.float32).reshape(proba["shape"]),
        in_process(models, "colors", {"color": x})[1],
    )


@pytest.mark.parametrize("binary", [False, True])
def test_a_string_model_echoes_text(server: Running, binary: bool) -> None:
    import tritonclient.http as httpclient

    client = httpclient.InferenceServerClient(server.url)
    words = np.asarray(["héllo", "", "紫 wörld", "a\tb"], dtype=object)
    tensor = httpclient.InferInput("text", [len(words)], "BYTES")
    tensor.set_data_from_numpy(words, binary_data=binary)
    result = client.infer("text", [tensor], outputs=[httpclient.InferRequestedOutput("echo", binary_data=binary)])
    echoed = [v.decode() if isinstance(v, bytes) else v for v in result.as_numpy("echo")]
    assert echoed == list(words)
    if not binary:
        assert result.get_response()["outputs"][0]["data"][0] == "héllo"


def test_bytes_that_are_not_utf8_are_refused_for_a_string_model(server: Running) -> None:
    raw = b"\xff\xfe"
    header = json.dumps(
        {
            "inputs": [
                {"name": "text", "datatype": "BYTES", "shape": [1], "parameters": {"binary_data_size": 4 + len(raw)}}
            ]
        }
    ).encode()
    status, _, body = server.request(
        "POST",
        "/v2/models/text/infer",
        header + len(raw).to_bytes(4, "little") + raw,
        {"Inference-Header-Content-Length": str(len(header))},
    )
    assert status == 400 and "not UTF-8" in json.loads(body)["error"]


VALUES = {
    "BOOL": np.array([True, False, True, False]),
    "UINT8": np.array([0, 7, 255, 1], np.uint8),
    "UINT16": np.array([0, 65535, 1, 2], np.uint16),
    "UINT32": np.array([0, 2**32 - 1, 1, 2], np.uint32),
    "UINT64": np.array([0, 1, 2**63, 2**64 - 1], np.uint64),
    "INT8": np.array([-128, 0, 127, -1], np.int8),
    "INT16": np.array([-(2**15), 2**15 - 1, 0, -1], np.int16),
    "INT32": np.array([-(2**31), 2**31 - 1, 0, -1], np.int32),
    "INT64": np.array([-(2**63), 0, 2**63 - 1, -1], np.int64),
    "FP16": np.array([0.1, -65504, 6e-8, 1], np.float16),
    "FP32": np.array([0.1, -3.4e38, 1e-45, -0.0], np.float32),
    "FP64": np.array([0.1, 1e308, -5e-324, 2 / 3], np.float64),
    "BYTES": np.array(["héllo", "", "x", "紫"], dtype=object),
}


@pytest.mark.parametrize("binary", [False, True])
def test_every_datatype_round_trips_exactly(server: Running, binary: bool) -> None:
    import tritonclient.http as httpclient

    client = httpclient.InferenceServerClient(server.url)
    inputs = []
    for datatype, values in VALUES.items():
        tensor = httpclient.InferInput(f"x_{datatype}", [len(values)], datatype)
        tensor.set_data_from_numpy(values, binary_data=binary)
        inputs.append(tensor)
    outputs = [httpclient.InferRequestedOutput(f"y_{d}", binary_data=binary) for d in VALUES]
    result = client.infer("identity", inputs, outputs=outputs)
    described = {o["name"]: o["datatype"] for o in result.get_response()["outputs"]}
    for datatype, values in VALUES.items():
        got = result.as_numpy(f"y_{datatype}")
        assert described[f"y_{datatype}"] == datatype
        if datatype == "BYTES":
            got = np.asarray([v.decode() if isinstance(v, bytes) else v for v in got], dtype=object)
        else:
            assert got.dtype == values.dtype, datatype
        assert np.array_equal(got, values), (datatype, got, values)


def identity_body(datatype: str, data: object, shape: list[int] | None = None) -> dict[str, object]:
    feeds = [
        {"name": f"x_{d}", "datatype": d, "shape": [len(v)], "data": v.tolist()}
        for d, v in VALUES.items()
        if d != datatype
    ]
    length = len(data) if isinstance(data, list) else 1
    feeds.append({"name": f"x_{datatype}", "datatype": datatype, "shape": shape or [length], "data": data})
    return {"inputs": feeds}


@pytest.mark.parametrize(
    ("datatype", "data", "fragment"),
    [
        ("BYTES", ["a", None, "b", "c"], "BYTES data must be strings; got null"),
        ("BYTES", ["a", {"b": 1}, "b", "c"], "got an object"),
        ("BYTES", [1, "a", "b", "c"], "got a number"),
        ("UINT64", [1, -1, 2, 3], "do not fit UINT64"),
        ("UINT64", [2**63, 1.5, 2, 3], "non-integers"),
        ("INT64", [1, 2**63, 2, 3], "do not fit INT64"),
        ("INT8", [128, 1, 2, 3], "do not fit INT8"),
        ("BOOL", [1, 0, 1, 0], "integers, which is not BOOL"),
        ("FP32", ["1.0", 1, 2, 3], "strings, which is not FP32"),
    ],
)
def test_elements_are_checked_per_datatype(server: Running, datatype: str, data: list[object], fragment: str) -> None:
    status, body = server.json("POST", "/v2/models/identity/infer", identity_body(datatype, data))
    assert status == 400 and fragment in body["error"], body


def test_binary_bool_bytes_must_be_zero_or_one(server: Running) -> None:
    feeds = [
        {"name": f"x_{d}", "datatype": d, "shape": [4], "data": v.tolist()} for d, v in VALUES.items() if d != "BOOL"
    ]
    feeds.append({"name": "x_BOOL", "datatype": "BOOL", "shape": [4], "parameters": {"binary_data_size": 4}})
    header = json.dumps({"inputs": feeds}).encode()
    for raw, status in ((b"\x00\x01\x01\x00", 200), (b"\x00\x02\x01\x00", 400)):
        answer = server.request(
            "POST", "/v2/models/identity/infer", header + raw, {"Inference-Header-Content-Length": str(len(header))}
        )
        assert answer[0] == status, answer[2]


def test_uint64_above_two_to_the_63_beside_small_values(server: Running) -> None:
    status, body = server.json(
        "POST", "/v2/models/identity/infer", identity_body("UINT64", [1, 2**63 + 5, 2**64 - 1, 0])
    )
    assert status == 200, body
    out = {o["name"]: o for o in body["outputs"]}["y_UINT64"]
    assert out["data"] == [1, 2**63 + 5, 2**64 - 1, 0]


def test_bfloat16_inputs_take_the_float32_path(server: Running, models: Models) -> None:
    import tritonclient.http as httpclient

    meta = httpclient.InferenceServerClient(server.url).get_model_metadata("bf16")
    assert meta["inputs"] == [{"name": "x", "datatype": "BF16", "shape": [-1, 2]}]
    x = np.array([[1.5, -2.25], [0.1, 3e38], [1 / 3, -0.0]], np.float32)
    want = in_process_bf16(models, x)
    status, doc = server.json(
        "POST",
        "/v2/models/bf16/infer",
        {"inputs": [{"name": "x", "datatype": "BF16", "shape": [3, 2], "data": x.ravel().tolist()}]},
    )
    assert status == 200, doc
    assert np.array_equal(np.asarray(doc["outputs"][0]["data"], np.float32).reshape(3, 2), want)
    raw = bf16_bits(x).tobytes()
    header = json.dumps(
        {
            "inputs": [
                {"name": "x", "datatype": "BF16", "shape": [3, 2], "parameters": {"binary_data_size": len(raw)}}
            ],
            "parameters": {"binary_data_output": True},
        }
    ).encode()
    status, headers, body = server.request(
        "POST", "/v2/models/bf16/infer", header + raw, {"Inference-Header-Content-Length": str(len(header))}
    )
    assert status == 200
    size = int(headers["inference-header-content-length"])
    assert np.array_equal(np.frombuffer(body[size:], "<f4").reshape(3, 2), want)


def in_process_bf16(models: Models, x: np.ndarray) -> np.ndarray:
    """bfloat16 in, float32 out, in process: the bits made by ml_dtypes, a library we did not write."""
    import ml_dtypes

    session = ort.InferenceSession(str(models.folder / "bf16.onnx"))
    bits = x.astype(ml_dtypes.bfloat16).view(np.uint16)
    return session.run(None, {"x": ort.OrtValue.ortvalue_from_numpy_with_onnx_type(bits, 16)})[0]  # type: ignore[no-any-return]


def test_a_bfloat16_output_is_refused_at_load_with_a_reason(models: Models, tmp_path: Path) -> None:
    import subprocess
    import sys

    from onnx import TensorProto, helper

    from .server_fixtures import _save

    graph = helper.make_graph(
        [helper.make_node("Cast", ["x"], ["y"], to=TensorProto.BFLOAT16)],
        "out",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N"])],
        [helper.make_tensor_value_info("y", TensorProto.BFLOAT16, ["N"])],
    )
    _save(graph, tmp_path / "out.onnx")
    (tmp_path / "server.json").write_text(json.dumps({"models": [{"name": "out", "version": 1, "path": "out.onnx"}]}))
    done = subprocess.run(
        [sys.executable, "-m", "mlops_iac.serving", "--config", str(tmp_path / "server.json"), "--port", "1"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode != 0
    assert "output 'y' is bfloat16" in done.stderr and "Traceback" not in done.stderr, done.stderr


@pytest.mark.parametrize("binary", [False, True])
def test_classification_gives_top_k_with_labels(server: Running, models: Models, binary: bool) -> None:
    import tritonclient.http as httpclient

    client = httpclient.InferenceServerClient(server.url)
    x = colors_batch()
    tensor = httpclient.InferInput("color", list(x.shape), "BYTES")
    tensor.set_data_from_numpy(x, binary_data=binary)
    result = client.infer(
        "colors_batched",
        [tensor],
        outputs=[httpclient.InferRequestedOutput("probabilities", binary_data=binary, class_count=2)],
    )
    got = result.as_numpy("probabilities")
    assert got.shape == (len(x), 2)
    proba = in_process(models, "colors", {"color": x})[1]
    labels = ["zero", "one", "two"]
    for row, answer in zip(proba, got, strict=True):
        order = sorted(range(3), key=lambda i: (-row[i], i))[:2]
        want = [f"{row[i]:f}:{i}:{labels[i]}" for i in order]
        assert [v.decode() if isinstance(v, bytes) else v for v in answer] == want


def test_binary_flags_are_parsed_strictly(server: Running) -> None:
    body = {
        "inputs": [{"name": "text", "datatype": "BYTES", "shape": [1], "data": ["a"]}],
        "parameters": {"binary_data_output": "false"},
    }
    status, doc = server.json("POST", "/v2/models/text/infer", body)
    assert status == 400 and "binary_data_output must be true or false" in doc["error"]
    body = {"inputs": body["inputs"], "outputs": [{"name": "echo", "parameters": {"binary_data": "true"}}]}
    status, doc = server.json("POST", "/v2/models/text/infer", body)
    assert status == 400 and "outputs[0].parameters.binary_data must be true or false" in doc["error"]
    body["outputs"] = [{"name": "echo", "parameters": {"classification": "2"}}]
    status, doc = server.json("POST", "/v2/models/text/infer", body)
    assert status == 400 and "classification must be a positive integer" in doc["error"]


def test_routes_slashes_and_allow(server: Running) -> None:
    status, meta = server.json("GET", "/v2/")
    assert status == 200 and "statistics" in meta["extensions"]
    assert server.json("GET", "/v2/models/text/")[0] == 200
    assert server.json("GET", "/v2/health/ready/") == (200, {"ready": True})
    for method, path, allowed in (
        ("TRACE", "/v2", "GET"),
        ("POST", "/v2/models/text/ready", "GET"),
        ("GET", "/v2/models/text/infer", "POST"),
        ("DELETE", "/v2/health/live", "GET"),
        ("PUT", "/v2/models/text/config", "GET"),
    ):
        status, headers, _ = server.request(method, path)
        assert status == 405 and headers.get("allow") == allowed, (method, path, headers)


def test_model_configuration_and_statistics(server: Running) -> None:
    import tritonclient.http as httpclient

    client = httpclient.InferenceServerClient(server.url)
    config = client.get_model_config("colors_batched")
    assert config["max_batch_size"] == 8 and config["platform"] == "onnxruntime_onnx"
    assert config["input"] == [{"name": "color", "data_type": "TYPE_STRING", "dims": [1]}]
    assert client.get_model_config("text", "1")["max_batch_size"] == 0
    before = client.get_inference_statistics("text")["model_stats"][0]
    tensor = httpclient.InferInput("text", [3], "BYTES")
    tensor.set_data_from_numpy(np.asarray(["a", "b", "c"], dtype=object))
    for _ in range(2):
        client.infer("text", [tensor])
    assert (
        server.json(
            "POST",
            "/v2/models/text/infer",
            {"inputs": [{"name": "nope", "datatype": "BYTES", "shape": [1], "data": ["a"]}]},
        )[0]
        == 400
    )
    after = client.get_inference_statistics("text", "1")["model_stats"][0]
    assert after["name"] == "text" and after["version"] == "1"
    stats, old = after["inference_stats"], before["inference_stats"]
    assert stats["success"]["count"] == old["success"]["count"] + 2
    assert stats["fail"]["count"] == old["fail"]["count"] + 1
    assert after["inference_count"] == before["inference_count"] + 6
    assert after["execution_count"] == before["execution_count"] + 2
    assert stats["success"]["ns"] > old["success"]["ns"] and after["last_inference"] > 0
    every = client.get_inference_statistics()["model_stats"]
    assert [s["name"] for s in every] == ["bf16", "colors", "colors_batched", "identity", "text"]


def raw_http(port: int, requests: list[bytes]) -> list[bytes]:
    """Requests written one after the other on one socket, each answer read whole."""
    answers = []
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        reader = sock.makefile("rb")
        for request in requests:
            sock.sendall(request)
            head = b""
            while not head.endswith(b"\r\n\r\n"):
                line = reader.readline()
                assert line, "the server closed the connection"
                head += line
            length = int(
                next(
                    v for k, _, v in (h.partition(b":") for h in head.split(b"\r\n")) if k.lower() == b"content-length"
                )
            )
            answers.append(head + reader.read(length))
        answers.append(reader.read())  # b"" once the server closes
    return answers


def test_http_1_0_keep_alive_is_honoured(server: Running) -> None:
    ask = b"GET /v2/health/live HTTP/1.0\r\nConnection: keep-alive\r\n\r\n"
    with socket.create_connection(("127.0.0.1", server.port), timeout=10) as sock:
        reader = sock.makefile("rb")
        for _ in range(3):
            sock.sendall(ask)
            status = reader.readline()
            headers = []
            while (line := reader.readline()) != b"\r\n":
                headers.append(line.strip().lower())
            assert status.startswith(b"HTTP/1.1 200") and b"connection: keep-alive" in headers
            length = next(int(h.split(b":")[1]) for h in headers if h.startswith(b"content-length"))
            assert reader.read(length) == b'{"live":true}'
    # without keep-alive, HTTP/1.0 still closes after the answer
    [answer, rest] = raw_http(server.port, [b"GET /v2/health/live HTTP/1.0\r\n\r\n"])
    assert answer.startswith(b"HTTP/1.1 200") and rest == b""


def test_collected_records_keep_strings_as_text(models: Models, tmp_path: Path) -> None:
    config = {
        "models": [model_entry(models, "text")],
        "collection": {"enabled": True, "sample_rate": 1.0, "sink": "file", "path": str(tmp_path / "c.jsonl")},
    }
    with running_server(models, config) as running:
        status, _ = running.json(
            "POST",
            "/v2/models/text/infer",
            {"inputs": [{"name": "text", "datatype": "BYTES", "shape": [2], "data": ["héllo", "x"]}]},
        )
        assert status == 200
    [line] = (tmp_path / "c.jsonl").read_text().splitlines()
    record = json.loads(line)
    assert record["inputs"] == {"text": ["héllo", "x"]} and record["outputs"] == {"echo": ["héllo", "x"]}
