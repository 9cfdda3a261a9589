"""The v2 gRPC service through the real server process, with clients nobody here wrote:
tritonclient.grpc unmodified, and Triton's own generated stubs for hand-made messages.
Every answer is compared with in-process onnxruntime on the same inputs."""

from __future__ import annotations

import json
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import grpc
import numpy as np
import onnxruntime as ort
import pytest
import tritonclient.grpc as grpcclient
from tritonclient.grpc import service_pb2, service_pb2_grpc
from tritonclient.utils import InferenceServerException

from mlops_iac.serving.protocol import bf16_bits

from .conftest import ROOT, free_port
from .server_fixtures import (
    V2_TO_ONNX,
    Models,
    Running,
    bf16_model,
    build_models,
    categorical_model,
    identity_model,
    model_entry,
    running_server,
)

KEY = "grpc-test-key"
AUTH = {"authorization": f"Bearer {KEY}"}


@pytest.fixture(scope="module")
def models(tmp_path_factory: pytest.TempPathFactory) -> Models:
    folder = tmp_path_factory.mktemp("grpc")
    built = build_models(folder)
    categorical_model(folder)
    shutil.copy(folder / "colors.onnx", folder / "colors_batched.onnx")
    identity_model(folder)
    typed_identity(folder)
    bf16_model(folder)
    return built


@pytest.fixture(scope="module")
def server(models: Models) -> Iterator[tuple[Running, int]]:
    port = free_port()
    config = {
        "models": [
            model_entry(models, "iris", max_batch_size=16, max_delay_ms=2),
            model_entry(models, "colors"),
            model_entry(models, "colors_batched", max_batch_size=8, max_delay_ms=1),
            model_entry(models, "identity"),
            model_entry(models, "typed"),
            model_entry(models, "bf16"),
        ],
        "auth": True,
        "grpc_port": port,
        "collection": {"enabled": True, "sample_rate": 1.0, "sink": "file", "path": "collected/grpc.jsonl"},
    }
    with running_server(models, config, env={"MLOPS_IAC_API_KEY": KEY}) as running:
        yield running, port


@pytest.fixture
def client(server: tuple[Running, int]) -> Iterator[grpcclient.InferenceServerClient]:
    with grpcclient.InferenceServerClient(f"127.0.0.1:{server[1]}") as c:
        yield c


def onnx(models: Models, name: str, feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
    return ort.InferenceSession(str(models.folder / f"{name}.onnx")).run(None, feeds)  # type: ignore[no-any-return]


def infer_input(name: str, array: np.ndarray, datatype: str) -> grpcclient.InferInput:
    tensor = grpcclient.InferInput(name, list(array.shape), datatype)
    tensor.set_data_from_numpy(array)
    return tensor


# --- the generated module --------------------------------------------------------------------


def test_the_committed_stubs_are_what_the_proto_generates(tmp_path: Path) -> None:
    """scripts/grpc_stubs.py regenerates the module; the committed one must be its output."""
    done = subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "grpc_stubs.py"), str(tmp_path)], capture_output=True, text=True
    )
    assert done.returncode == 0, done.stderr
    committed = ROOT / "mlops_iac" / "serving" / "open_inference_grpc_pb2.py"
    assert (tmp_path / committed.name).read_text() == committed.read_text(), (
        "stale: run `python scripts/grpc_stubs.py` and commit the result"
    )
    header = (ROOT / "mlops_iac" / "serving" / "open_inference_grpc.proto").read_text()
    assert "kserve/open-inference-protocol" in header and "eeb043e2c95c1dd35f8b9185f5dadf44c7f10c9f" in header


def test_our_messages_load_beside_tritonclients() -> None:
    """Both define `inference.*`: ours live in a pool of their own, so one process takes both."""
    from mlops_iac.serving import open_inference_grpc_pb2 as ours

    request = service_pb2.ModelInferRequest(model_name="m", raw_input_contents=[b"\x01\x02"])
    request.inputs.add(name="x", datatype="INT8", shape=[2])
    parsed = ours.ModelInferRequest.FromString(request.SerializeToString())
    assert parsed.model_name == "m" and parsed.inputs[0].shape == [2] and parsed.raw_input_contents == [b"\x01\x02"]


# --- answers ---------------------------------------------------------------------------------


def test_health_and_metadata(client: grpcclient.InferenceServerClient, models: Models) -> None:
    # Health needs no key, like REST's /v2/health routes.
    assert client.is_server_live() and client.is_server_ready()
    assert client.is_model_ready("iris", headers=AUTH)
    meta = client.get_server_metadata(headers=AUTH, as_json=True)
    assert meta["name"] == "mlops-iac" and "classification" in meta["extensions"]
    model = client.get_model_metadata("colors", headers=AUTH, as_json=True)
    session = ort.InferenceSession(str(models.folder / "colors.onnx"))
    assert [i["name"] for i in model["inputs"]] == [i.name for i in session.get_inputs()]
    assert model["inputs"][0] == {"name": "color", "datatype": "BYTES", "shape": ["-1", "1"]}
    assert model["versions"] == ["1"] and model["platform"] == "onnxruntime_onnx"


@pytest.mark.parametrize("model", ["colors", "colors_batched"])
def test_a_model_trained_on_strings_answers_like_onnxruntime(
    client: grpcclient.InferenceServerClient, models: Models, model: str
) -> None:
    from .server_fixtures import COLORS

    x = np.asarray([*COLORS, "purple", "RED", ""], dtype=object).reshape(-1, 1)
    result = client.infer(model, [infer_input("color", x, "BYTES")], headers=AUTH)
    label, proba = onnx(models, "colors", {"color": x})
    assert np.array_equal(result.as_numpy("label"), label)
    assert np.array_equal(result.as_numpy("probabilities"), proba)  # bit for bit
    assert not np.array_equal(proba[0], proba[5])  # known and unknown colours differ


def test_typed_contents_and_raw_contents_give_the_same_answer(server: tuple[Running, int], models: Models) -> None:
    """Triton's own stubs, by hand: strings in `contents.bytes_contents` instead of raw bytes."""
    x = np.asarray([["red"], ["紫"], ["unknown"]], dtype=object)
    request = service_pb2.ModelInferRequest(model_name="colors", id="typed-1")
    tensor = request.inputs.add(name="color", datatype="BYTES", shape=[3, 1])
    tensor.contents.bytes_contents.extend(v.encode() for v in x[:, 0])
    request.outputs.add(name="probabilities")
    with grpc.insecure_channel(f"127.0.0.1:{server[1]}") as channel:
        response = service_pb2_grpc.GRPCInferenceServiceStub(channel).ModelInfer(request, metadata=list(AUTH.items()))
    assert response.id == "typed-1" and [o.name for o in response.outputs] == ["probabilities"]
    assert list(response.outputs[0].shape) == [3, 3] and response.outputs[0].datatype == "FP32"
    got = np.frombuffer(response.raw_output_contents[0], dtype="<f4").reshape(3, 3)
    assert np.array_equal(got, onnx(models, "colors", {"color": x})[1])


IDENTITY_VALUES = {
    "BOOL": np.array([True, False, True]),
    "UINT8": np.array([0, 7, 255], np.uint8),
    "UINT16": np.array([0, 9, 65535], np.uint16),
    "UINT32": np.array([0, 1, 2**32 - 1], np.uint32),
    "UINT64": np.array([0, 1, 2**64 - 1], np.uint64),
    "INT8": np.array([-128, 0, 127], np.int8),
    "INT16": np.array([-32768, 5, 32767], np.int16),
    "INT32": np.array([-(2**31), 5, 2**31 - 1], np.int32),
    "INT64": np.array([-(2**63), 5, 2**63 - 1], np.int64),
    "FP16": np.array([0.5, -2.25, 65504], np.float16),
    "FP32": np.array([1.5, np.nan, -np.inf], np.float32),
    "FP64": np.array([1e300, -0.0, 2.5], np.float64),
    "BYTES": np.array(["héllo", "", "a\x00b"], dtype=object),
}


def _same(got: np.ndarray, values: np.ndarray) -> bool:
    if values.dtype == object:
        return [v.decode() for v in got.reshape(-1)] == list(values)
    return got.dtype == values.dtype and np.array_equal(got, values, equal_nan=values.dtype.kind == "f")


def test_every_datatype_round_trips_raw(client: grpcclient.InferenceServerClient) -> None:
    """tritonclient.grpc sends raw_input_contents and reads raw_output_contents."""
    inputs = [infer_input(f"x_{d}", IDENTITY_VALUES[d], d) for d in V2_TO_ONNX]
    result = client.infer("identity", inputs, headers=AUTH)
    for datatype in V2_TO_ONNX:
        assert _same(result.as_numpy(f"y_{datatype}"), IDENTITY_VALUES[datatype]), datatype


TYPED = [d for d in V2_TO_ONNX if d != "FP16"]  # FP16 has no InferTensorContents field: raw only


def typed_identity(folder: Path) -> None:
    """identity.onnx without FP16: every input can come in its InferTensorContents field."""
    from onnx import helper

    from .server_fixtures import _save

    graph = helper.make_graph(
        [helper.make_node("Identity", [f"x_{d}"], [f"y_{d}"]) for d in TYPED],
        "typed",
        [helper.make_tensor_value_info(f"x_{d}", V2_TO_ONNX[d], ["N"]) for d in TYPED],
        [helper.make_tensor_value_info(f"y_{d}", V2_TO_ONNX[d], ["N"]) for d in TYPED],
    )
    _save(graph, folder / "typed.onnx")


def test_every_datatype_round_trips_typed(server: tuple[Running, int]) -> None:
    """Triton's own stubs, by hand: every datatype in its own InferTensorContents field."""
    from tritonclient.utils import deserialize_bytes_tensor

    from mlops_iac.serving.grpc_tensors import CONTENTS

    request = service_pb2.ModelInferRequest(model_name="typed")
    for datatype in TYPED:
        values = IDENTITY_VALUES[datatype]
        field = getattr(
            request.inputs.add(name=f"x_{datatype}", datatype=datatype, shape=[3]).contents, CONTENTS[datatype]
        )
        field.extend([v.encode() for v in values] if datatype == "BYTES" else values.tolist())
    with grpc.insecure_channel(f"127.0.0.1:{server[1]}") as channel:
        response = service_pb2_grpc.GRPCInferenceServiceStub(channel).ModelInfer(request, metadata=list(AUTH.items()))
    for output, raw in zip(response.outputs, response.raw_output_contents, strict=True):
        values = IDENTITY_VALUES[output.datatype]
        assert output.name == f"y_{output.datatype}" and list(output.shape) == [3]
        got = (
            deserialize_bytes_tensor(raw)
            if output.datatype == "BYTES"
            else np.frombuffer(raw, dtype=values.dtype.newbyteorder("<")).astype(values.dtype)
        )
        assert _same(got, values), output.datatype
    assert len(response.outputs) == len(TYPED)


def test_bfloat16_travels_raw(client: grpcclient.InferenceServerClient, models: Models) -> None:
    import ml_dtypes

    x = np.array([[1.0, -2.5], [3.140625, 1e10]], dtype=np.float32)
    result = client.infer("bf16", [infer_input("x", x.astype(ml_dtypes.bfloat16), "BF16")], headers=AUTH)
    assert np.array_equal(result.as_numpy("y"), x.astype(ml_dtypes.bfloat16).astype(np.float32))
    assert np.array_equal(bf16_bits(result.as_numpy("y")), bf16_bits(x))  # our rounding agrees


def test_classification_matches_rest(server: tuple[Running, int], client: grpcclient.InferenceServerClient) -> None:
    running = server[0]
    x = np.asarray([["red"], ["blue"]], dtype=object)
    result = client.infer(
        "colors",
        [infer_input("color", x, "BYTES")],
        headers=AUTH,
        outputs=[grpcclient.InferRequestedOutput("probabilities", class_count=2)],
    )
    status, rest = running.json(
        "POST",
        "/v2/models/colors/infer",
        {
            "inputs": [{"name": "color", "datatype": "BYTES", "shape": [2, 1], "data": ["red", "blue"]}],
            "outputs": [{"name": "probabilities", "parameters": {"classification": 2}}],
        },
        authorization=f"Bearer {KEY}",
    )
    assert status == 200
    assert [v.decode() for v in result.as_numpy("probabilities").reshape(-1)] == rest["outputs"][0]["data"]
    assert rest["outputs"][0]["data"][0].endswith(":zero")  # labels from the model's metadata


def test_grpc_and_rest_share_the_batcher_and_each_gets_its_own_rows(
    server: tuple[Running, int], models: Models
) -> None:
    """Concurrent gRPC and REST requests of 1 to 5 rows on a batching model: every answer equals
    onnxruntime on that request alone, and the metrics count both protocols."""
    running, port = server
    before = _counter(running, 'mlops_requests_total{model="iris",status="200",version="1"}')
    rng = np.random.default_rng(7)
    requests = [models.iris[rng.integers(0, len(models.iris), size=int(rng.integers(1, 6)))] for _ in range(120)]

    def over_grpc(x: np.ndarray) -> np.ndarray:
        with grpcclient.InferenceServerClient(f"127.0.0.1:{port}") as c:
            return c.infer("iris", [infer_input("input", x, "FP32")], headers=AUTH).as_numpy("probabilities")  # type: ignore[no-any-return]

    def over_rest(x: np.ndarray) -> np.ndarray:
        status, doc = running.json(
            "POST",
            "/v2/models/iris/infer",
            {"inputs": [{"name": "input", "datatype": "FP32", "shape": list(x.shape), "data": x.reshape(-1).tolist()}]},
            authorization=f"Bearer {KEY}",
        )
        assert status == 200, doc
        out = next(o for o in doc["outputs"] if o["name"] == "probabilities")
        return np.asarray(out["data"], dtype=np.float32).reshape(out["shape"])

    with ThreadPoolExecutor(16) as pool:
        answers = list(pool.map(lambda ix: (over_grpc if ix[0] % 2 else over_rest)(ix[1]), enumerate(requests)))
    for x, got in zip(requests, answers, strict=True):
        # A merged batch takes another matrix-multiply path: the last bit may differ, another
        # client's row would differ in the first digits.
        np.testing.assert_allclose(got, onnx(models, "iris", {"input": x})[1], rtol=1e-6, atol=1e-7)
    after = _counter(running, 'mlops_requests_total{model="iris",status="200",version="1"}')
    assert after - before == len(requests)


def _counter(running: Running, series: str) -> float:
    status, _, body = running.request("GET", "/metrics", headers={"authorization": f"Bearer {KEY}"})
    assert status == 200
    for line in body.decode().splitlines():
        if line.startswith(series + " "):
            return float(line.split()[-1])
    return 0.0


def test_grpc_requests_are_collected(
    server: tuple[Running, int], client: grpcclient.InferenceServerClient, models: Models
) -> None:
    x = models.iris[:2]
    request_id = f"collected-{time.monotonic_ns()}"
    client.infer("iris", [infer_input("input", x, "FP32")], request_id=request_id, headers=AUTH)
    path = models.folder / "collected" / "grpc.jsonl"
    deadline = time.monotonic() + 30
    while True:  # the collector writes from its own thread
        records = [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []
        found = [r for r in records if r.get("id") == request_id]
        if found or time.monotonic() > deadline:
            break
        time.sleep(0.05)
    assert len(found) == 1 and found[0]["model"] == "iris"
    assert np.allclose(np.asarray(found[0]["inputs"]["input"], dtype=np.float32), x)


# --- refusals --------------------------------------------------------------------------------


def _code(call: Any) -> tuple[grpc.StatusCode, str]:
    with pytest.raises(InferenceServerException) as caught:
        call()
    status = caught.value.status() or ""
    return getattr(grpc.StatusCode, status.removeprefix("StatusCode."), None), caught.value.message() or ""


def test_refusals_have_codes_and_messages(client: grpcclient.InferenceServerClient, models: Models) -> None:
    x = models.iris[:2]
    cases = [
        (lambda: client.infer("iris", [infer_input("input", x, "FP32")]), grpc.StatusCode.UNAUTHENTICATED, "API key"),
        (
            lambda: client.infer("iris", [infer_input("input", x, "FP32")], headers={"authorization": "Bearer wrong"}),
            grpc.StatusCode.UNAUTHENTICATED,
            "API key",
        ),
        (lambda: client.get_model_metadata("iris"), grpc.StatusCode.UNAUTHENTICATED, "API key"),
        (
            lambda: client.infer("nope", [infer_input("input", x, "FP32")], headers=AUTH),
            grpc.StatusCode.NOT_FOUND,
            "not served here",
        ),
        (
            lambda: client.infer("iris", [infer_input("input", x, "FP32")], model_version="9", headers=AUTH),
            grpc.StatusCode.NOT_FOUND,
            "no version '9'",
        ),
        (
            lambda: client.infer("iris", [infer_input("input", x[:, :3].copy(), "FP32")], headers=AUTH),
            grpc.StatusCode.INVALID_ARGUMENT,
            "expected [-1, 4]",
        ),
        (
            lambda: client.infer("iris", [infer_input("input", x.astype(np.float64), "FP64")], headers=AUTH),
            grpc.StatusCode.INVALID_ARGUMENT,
            "expected FP32",
        ),
        (
            lambda: client.infer(
                "iris",
                [infer_input("input", x, "FP32")],
                headers=AUTH,
                outputs=[grpcclient.InferRequestedOutput("nope")],
            ),
            grpc.StatusCode.INVALID_ARGUMENT,
            "unknown output 'nope'",
        ),
    ]
    for call, code, message in cases:
        got_code, got_message = _code(call)
        assert (got_code, message in got_message) == (code, True), got_message
    assert client.is_server_live()  # and it keeps serving


def test_malformed_messages_are_invalid_argument(server: tuple[Running, int]) -> None:
    def request(**tensor: Any) -> Any:
        message = service_pb2.ModelInferRequest(model_name="identity")
        message.inputs.add(name="x_INT8", datatype=tensor.pop("datatype", "INT8"), shape=tensor.pop("shape", [2]))
        for key, value in tensor.items():
            if key == "raw":
                message.raw_input_contents.extend(value)
            else:
                getattr(message.inputs[0].contents, key).extend(value)
        return message

    cases = [
        (request(raw=[b"\x01"]), "needs 2 bytes"),
        (request(raw=[b"\x01\x02", b"\x03"]), "2 entries for 1 inputs"),
        (request(raw=[b"\x01\x02"], int_contents=[1, 2]), "not both"),
        (request(int_contents=[1, 300]), "do not fit INT8"),
        (request(int_contents=[1]), "needs 2 values"),
        (request(fp32_contents=[1.0, 2.0]), "goes in contents.int_contents"),
        (request(), "needs 2 values"),
        (request(datatype="FP16", shape=[1]), "must come in raw_input_contents"),
        (request(datatype="INT3", raw=[b""]), "is not one of"),
        (request(shape=[-1], raw=[b""]), "non-negative"),
        (service_pb2.ModelInferRequest(model_name="identity"), "at least one tensor"),
    ]
    with grpc.insecure_channel(f"127.0.0.1:{server[1]}") as channel:
        stub = service_pb2_grpc.GRPCInferenceServiceStub(channel)
        for message, text in cases:
            with pytest.raises(grpc.RpcError) as caught:
                stub.ModelInfer(message, metadata=list(AUTH.items()))
            assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT, caught.value.details()
            assert text in (caught.value.details() or ""), caught.value.details()
        assert stub.ServerLive(service_pb2.ServerLiveRequest()).live


def test_a_grpc_port_in_use_is_one_clear_error(models: Models) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        settings = models.folder / "busy.json"
        settings.write_text(json.dumps({"models": [model_entry(models, "iris")], "grpc_port": taken.getsockname()[1]}))
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
            timeout=120,
        )
    assert done.returncode == 1
    assert "cannot listen for gRPC on 127.0.0.1:" in done.stderr and "Traceback" not in done.stderr


def test_sigterm_drains_grpc_requests_in_flight(models: Models) -> None:
    """A request waiting in its batch (a 5 s delay) when SIGTERM comes still gets its answer,
    and the batcher closes only after it: gRPC drains beside REST."""
    port = free_port()
    config = {"models": [model_entry(models, "iris", max_batch_size=64, max_delay_ms=5000)], "grpc_port": port}
    x = models.iris[:3]
    with running_server(models, config) as running, ThreadPoolExecutor(1) as pool:
        client = grpcclient.InferenceServerClient(f"127.0.0.1:{port}")
        pending = pool.submit(lambda: client.infer("iris", [infer_input("input", x, "FP32")]))
        time.sleep(1.0)  # the request is in the batcher's queue now
        running.process.send_signal(signal.SIGTERM)
        result = pending.result(timeout=60)
        np.testing.assert_allclose(
            result.as_numpy("probabilities"), onnx(models, "iris", {"input": x})[1], rtol=1e-6, atol=1e-7
        )
        running.process.wait(60)
        client.close()
    assert "Traceback" not in running.log.read_text()
