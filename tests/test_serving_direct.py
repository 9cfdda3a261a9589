"""The inference request answered from the HTTP protocol's callback (serving/http11.py) against
the ASGI path it short-cuts: the same bytes for the same request, over a real socket.

A query string keeps a request off the direct path (its URL no longer ends in /infer), so
`/infer?` is the ASGI path's answer to the same request: the reference for every byte."""

from __future__ import annotations

import json
import socket
from collections.abc import Iterator

import numpy as np
import pytest

from mlops_iac.convert.onnx_tools import run, session

from .server_fixtures import Models, Running, build_models, model_entry, running_server


@pytest.fixture(scope="module")
def models(tmp_path_factory: pytest.TempPathFactory) -> Models:
    return build_models(tmp_path_factory.mktemp("models"))


@pytest.fixture(scope="module")
def server(models: Models) -> Iterator[Running]:
    config = {
        "models": [model_entry(models, "iris"), model_entry(models, "iris", 2, weight=0)],
        "auth": True,
        "max_body_bytes": 4096,
    }
    with running_server(models, config, env={"MLOPS_IAC_API_KEY": "k"}) as running:
        yield running


def exchange(server: Running, *requests: bytes) -> bytes:
    """Sends the requests back to back on one connection (pipelined) and reads every answer."""
    with socket.create_connection(("127.0.0.1", server.port), timeout=30) as sock:
        sock.sendall(b"".join(requests))
        received = b""
        while received.count(b"HTTP/1.1 ") < len(requests) or not _complete(received, len(requests)):
            chunk = sock.recv(65536)
            assert chunk, received
            received += chunk
        return received


def _complete(data: bytes, count: int) -> bool:
    """Whether `data` holds `count` whole answers (each with its content-length)."""
    for _ in range(count):
        head, sep, rest = data.partition(b"\r\n\r\n")
        if not sep:
            return False
        length = next(int(line.split(b":")[1]) for line in head.split(b"\r\n") if line.startswith(b"content-length"))
        if len(rest) < length:
            return False
        data = rest[length:]
    return True


def post(path: str, body: bytes, *headers: str) -> bytes:
    lines = [f"POST {path} HTTP/1.1", "host: 127.0.0.1", f"content-length: {len(body)}", *headers]
    return ("\r\n".join(lines) + "\r\n\r\n").encode() + body


def json_body(x: np.ndarray, **extra: object) -> bytes:
    tensor = {"name": "input", "datatype": "FP32", "shape": list(x.shape), "data": x.ravel().tolist()}
    return json.dumps({"inputs": [tensor], **extra}).encode()


CASES = {
    "json": (json_body, ("authorization: Bearer k",)),
    "binary outputs": (lambda x: json_body(x, parameters={"binary_data_output": True}), ("authorization: Bearer k",)),
    "no key": (json_body, ()),
    "wrong key": (json_body, ("authorization: Bearer nope",)),
    "bad shape": (lambda x: json_body(x[:, :2]), ("authorization: Bearer k",)),
    "not json": (lambda x: b"{", ("authorization: Bearer k",)),
    "over the body limit": (lambda x: json_body(np.repeat(x, 60, 0)), ("authorization: Bearer k",)),
}


@pytest.mark.parametrize("case", sorted(CASES))
@pytest.mark.parametrize("path", ["/v2/models/iris/infer", "/v2/models/iris/versions/2/infer"])
def test_the_direct_answer_is_the_asgi_answer(server: Running, models: Models, case: str, path: str) -> None:
    make, headers = CASES[case]
    body = make(models.iris[:3])
    direct = exchange(server, post(path, body, *headers))
    assert direct == exchange(server, post(path + "?", body, *headers))
    if case == "json":
        answer = json.loads(direct.partition(b"\r\n\r\n")[2])
        label, _ = run(session((models.folder / "iris.onnx").read_bytes()), models.iris[:3])
        assert answer["outputs"][0]["data"] == label.tolist()
        assert answer["model_version"] == path.split("/")[-2] if "versions" in path else "1"


def test_pipelined_requests_are_answered_in_order(server: Running, models: Models) -> None:
    """Three requests in one send: direct, ASGI (query string), direct; the answers in order."""
    auth = "authorization: Bearer k"
    rows = [models.iris[i : i + 1] for i in range(3)]
    paths = ["/v2/models/iris/infer", "/v2/models/iris/infer?", "/v2/models/iris/versions/2/infer"]
    received = exchange(server, *(post(p, json_body(r), auth) for p, r in zip(paths, rows, strict=True)))
    answers = []
    for _ in rows:
        head, _, rest = received.partition(b"\r\n\r\n")
        length = int(
            next(v for k, _, v in (line.partition(b": ") for line in head.split(b"\r\n")) if k == b"content-length")
        )
        answers.append(json.loads(rest[:length]))
        received = rest[length:]
    assert received == b""
    local = session((models.folder / "iris.onnx").read_bytes())
    for row, answer, version in zip(rows, answers, ("1", "1", "2"), strict=True):
        assert answer["model_version"] == version
        assert answer["outputs"][0]["data"] == run(local, row)[0].tolist()


def test_a_connection_close_request_is_answered_and_closed(server: Running, models: Models) -> None:
    def until_closed(path: str) -> bytes:
        with socket.create_connection(("127.0.0.1", server.port), timeout=30) as sock:
            body = json_body(models.iris[:1])
            sock.sendall(post(path, body, "authorization: Bearer k", "connection: close"))
            received = b""
            while chunk := sock.recv(65536):  # the server closes the connection after its answer
                received += chunk
            return received

    direct = until_closed("/v2/models/iris/infer")
    assert direct.startswith(b"HTTP/1.1 200 ") and b"\r\nconnection: close\r\n\r\n" in direct
    assert direct == until_closed("/v2/models/iris/infer?")


def test_a_client_gone_mid_body_leaves_lone_requests_inline(models: Models) -> None:
    """A request whose body never completes was counted as arrived but never started: left
    counted, the batcher would never look quiet again and every lone request would take the
    batcher's hop. After three such clients, five lone requests still run inline (none
    reaches the batcher, whose batch-size histogram stays empty) and answer right."""
    config = {"models": [model_entry(models, "iris", max_batch_size=8, max_delay_ms=0)]}
    with running_server(models, config) as server:
        request = post("/v2/models/iris/infer", json_body(models.iris[:1]))
        for _ in range(3):
            with socket.create_connection(("127.0.0.1", server.port), timeout=30) as sock:
                sock.sendall(request[:-10])  # the headers and most of the body, then gone
                server.json("GET", "/v2/health/ready")  # the server has read it meanwhile
        label, _ = run(session((models.folder / "iris.onnx").read_bytes()), models.iris[:1])
        for _ in range(5):
            status, doc = server.json("POST", "/v2/models/iris/infer", json.loads(json_body(models.iris[:1])))
            assert status == 200, doc
            assert doc["outputs"][0]["data"] == label.tolist()
        _, _, text = server.request("GET", "/metrics")
        counts = [line for line in text.decode().splitlines() if line.startswith("mlops_batch_size_count")]
        assert counts == ['mlops_batch_size_count{model="iris",version="1"} 0.0']
