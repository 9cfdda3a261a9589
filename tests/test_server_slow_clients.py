"""Slow and surplus clients against the real server process: a connection that sends nothing,
half a request head, or less body than it announced is closed after the configured timeout
(on the direct inference path and the ASGI path alike), while other clients are answered; past
the connection cap a connection gets a 503 at once, and serving resumes when the others go.
Timeouts here are short so the tests are quick; the waits for a close are generous, and nothing
asserts how fast anything was."""

from __future__ import annotations

import json
import select
import socket
import time
from collections.abc import Iterator

import numpy as np
import pytest
import tritonclient.grpc as grpcclient

from mlops_iac.convert.onnx_tools import run, session
from mlops_iac.serving.config import ServerConfig

from .conftest import free_port
from .server_fixtures import Models, Running, build_models, model_entry, running_server

KEY = "slow-test-key"
CLOSE_WITHIN = 20.0  # seconds: far above the 0.5 s timeouts; a connection still open then is held


@pytest.fixture(scope="module")
def models(tmp_path_factory: pytest.TempPathFactory) -> Models:
    return build_models(tmp_path_factory.mktemp("slow-models"))


@pytest.fixture(scope="module")
def server(models: Models) -> Iterator[tuple[Running, int, int]]:
    grpc_port, metrics_port = free_port(), free_port()
    config = {
        "models": [model_entry(models, "iris")],
        "auth": True,
        "grpc_port": grpc_port,
        "metrics_port": metrics_port,
        "header_timeout_s": 0.5,
        "body_timeout_s": 0.5,
    }
    with running_server(models, config, env={"MLOPS_IAC_API_KEY": KEY}) as running:
        yield running, grpc_port, metrics_port


def connect(port: int) -> socket.socket:
    return socket.create_connection(("127.0.0.1", port), timeout=CLOSE_WITHIN)


def until_closed(sock: socket.socket) -> bytes:
    """Everything the server writes until it closes the connection; fails if it stays open."""
    data = b""
    try:
        while chunk := sock.recv(65536):
            data += chunk
    except TimeoutError:
        pytest.fail(f"still open after {CLOSE_WITHIN} s; got {data!r}")
    except ConnectionResetError:
        pass  # closed too, with bytes of ours unread
    finally:
        sock.close()
    return data


def infer_doc(x: np.ndarray) -> bytes:
    tensor = {"name": "input", "shape": list(x.shape), "datatype": "FP32", "data": x.ravel().tolist()}
    return json.dumps({"inputs": [tensor]}).encode()


def head(path: str, length: int, authorization: str = f"Bearer {KEY}") -> bytes:
    return (
        f"POST {path} HTTP/1.1\r\nHost: x\r\nAuthorization: {authorization}\r\n"
        f"Content-Type: application/json\r\nContent-Length: {length}\r\n\r\n"
    ).encode()


def check_answer(server: Running, models: Models, authorization: str = f"Bearer {KEY}") -> None:
    x = models.iris[:3]
    status, answer = server.json("POST", "/v2/models/iris/infer", json.loads(infer_doc(x)), Authorization=authorization)
    assert status == 200, answer
    expected = run(session((models.folder / "iris.onnx").read_bytes()), x)
    got = {o["name"]: np.array(o["data"]).reshape(o["shape"]) for o in answer["outputs"]}
    np.testing.assert_allclose(got["probabilities"], expected[1], rtol=1e-5)


def test_slow_clients_are_closed_while_others_are_answered(server: tuple[Running, int, int], models: Models) -> None:
    running = server[0]
    silent = connect(running.port)
    slowloris = connect(running.port)
    slowloris.sendall(b"POST /v2/models/iris/infer HTTP/1.1\r\nHost: x\r\nContent-Le")
    body = infer_doc(models.iris[:1])
    direct = connect(running.port)  # the direct path: its answer waits for the whole body
    direct.sendall(head("/v2/models/iris/infer", len(body) + 90) + body[:10])
    asgi = connect(running.port)  # a query string takes the ASGI path, whose task awaits the body
    asgi.sendall(head("/v2/models/iris/infer?path=asgi", 100) + b"x" * 10)
    check_answer(running, models)
    assert until_closed(silent) == b""  # nothing came: closed without an answer
    for sock in (slowloris, direct, asgi):
        assert until_closed(sock).startswith(b"HTTP/1.1 408 ")
    check_answer(running, models)


def test_a_head_dripped_a_byte_at_a_time_is_closed_at_the_deadline(server: tuple[Running, int, int]) -> None:
    sock = connect(server[0].port)
    sock.sendall(b"GET /v2/health/live HTTP/1.1\r\nX-Slow: ")
    deadline = time.monotonic() + CLOSE_WITHIN
    while time.monotonic() < deadline:
        readable, _, _ = select.select([sock], [], [], 0.1)  # a byte every 0.1 s, until the server closes
        if readable:
            break
        try:
            sock.sendall(b"a")
        except OSError:
            break
    assert until_closed(sock).startswith(b"HTTP/1.1 408 ")


def test_after_an_answer_the_next_head_has_the_header_timeout(server: tuple[Running, int, int], models: Models) -> None:
    sock = connect(server[0].port)
    body = infer_doc(models.iris[:1])
    sock.sendall(head("/v2/models/iris/infer", len(body)) + body)
    first = b""
    while b"}" not in first:  # the JSON answer, whole (the connection stays open)
        first += sock.recv(65536)
    assert first.startswith(b"HTTP/1.1 200 ")
    sock.sendall(b"GET /v2/health/live HTTP/1.1\r\n")  # its first byte cancels uvicorn's keep-alive timer
    assert until_closed(sock).startswith(b"HTTP/1.1 408 ")


def test_the_bearer_scheme_is_case_insensitive(server: tuple[Running, int, int], models: Models) -> None:
    running, grpc_port, _ = server
    check_answer(running, models, f"bearer {KEY}")  # the direct path
    check_answer(running, models, f"BEARER  {KEY}")
    assert running.json("GET", "/v2/models/iris", Authorization=f"bearer {KEY}")[0] == 200  # the ASGI path
    assert running.json("GET", "/v2/models/iris", Authorization=f"bearer {KEY}x")[0] == 401
    assert running.json("GET", "/v2/models/iris", Authorization=f"Basic {KEY}")[0] == 401
    with grpcclient.InferenceServerClient(f"127.0.0.1:{grpc_port}") as client:
        assert client.get_model_metadata("iris", headers={"authorization": f"bearer {KEY}"}).name == "iris"


def test_a_silent_grpc_connection_is_closed(server: tuple[Running, int, int]) -> None:
    # No HTTP/2 preface within the header timeout: grpc's GOAWAY, then the close.
    assert b"handshake timeout" in until_closed(connect(server[1]))
    with grpcclient.InferenceServerClient(f"127.0.0.1:{server[1]}") as client:
        assert client.is_server_live()


def test_the_metrics_listener_closes_slow_clients_too(server: tuple[Running, int, int]) -> None:
    silent, partial = connect(server[2]), connect(server[2])
    partial.sendall(b"GET /metrics HTTP/1.1\r\n")
    assert until_closed(silent) == b""
    assert until_closed(partial).startswith(b"HTTP/1.1 408 ")
    scrape = connect(server[2])
    scrape.sendall(b"GET /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
    assert b"mlops_ready 1.0" in until_closed(scrape)


def test_past_the_cap_connections_get_a_503_until_others_go(models: Models) -> None:
    config = {"models": [model_entry(models, "iris")], "max_connections": 4, "header_timeout_s": 600}
    with running_server(models, config) as running:
        held = []
        for _ in range(4):  # accepted in this order, so the next ones are over the cap
            sock = connect(running.port)
            sock.sendall(b"GET /v2/health/live HTTP/1.1\r\n")  # a head never finished
            held.append(sock)
        for _ in range(3):
            answer = until_closed(connect(running.port))
            assert answer.startswith(b"HTTP/1.1 503 ") and b"connection: close" in answer
        for sock in held:
            sock.close()
        deadline = time.monotonic() + CLOSE_WITHIN
        while True:  # the server sees the closes on its next reads
            try:
                check_answer(running, models)
                break
            except (ConnectionError, AssertionError):
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.05)


def test_the_limits_default_below_the_open_files_and_are_left_out_of_the_settings() -> None:
    import resource

    from mlops_iac.serving.guard import default_max_connections

    soft = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
    assert 0 < default_max_connections() < soft
    config = ServerConfig.model_validate({"models": [{"name": "m", "version": 1, "path": "m.onnx"}]})
    written = config.model_dump(mode="json")
    assert not {"header_timeout_s", "body_timeout_s", "max_connections"} & set(written)  # digests unchanged
    changed = config.model_copy(update={"max_connections": 300, "body_timeout_s": 5.0}).model_dump(mode="json")
    assert (changed["max_connections"], changed["body_timeout_s"]) == (300, 5.0)
    with pytest.raises(ValueError, match="header_timeout_s"):
        ServerConfig.model_validate({**written, "header_timeout_s": 0})
