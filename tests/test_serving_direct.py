"""The inference request answered from the HTTP protocol's callback (serving/http11.py) against
the ASGI path it short-cuts: the same bytes for the same request, over a real socket.

A query string keeps a request off the direct path (its URL no longer ends in /infer), so
`/infer?` is the ASGI path's answer to the same request: the reference for every byte."""

from __future__ import annotations

import asyncio
import json
import socket
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import uvloop
from uvicorn.server import ServerState

from mlops_iac.convert.onnx_tools import run, session
from mlops_iac.serving.app import Server
from mlops_iac.serving.config import ServerConfig
from mlops_iac.serving.run import uvicorn_config

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


CASES: dict[str, tuple[Callable[[np.ndarray], bytes], tuple[str, ...]]] = {
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


class Recording(asyncio.Transport):
    """A connection that keeps what the server writes (nothing reaches a socket)."""

    def __init__(self) -> None:
        super().__init__()
        self.written: list[bytes] = []

    def write(self, data: bytes | bytearray | memoryview) -> None:
        self.written.append(bytes(data))

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return {"sockname": ("127.0.0.1", 8080), "peername": ("127.0.0.1", 40000)}.get(name, default)

    def is_closing(self) -> bool:
        return False

    def close(self) -> None:
        pass

    def pause_reading(self) -> None:
        pass

    def resume_reading(self) -> None:
        pass


def in_process(config: dict[str, Any], folder: Path) -> Server:
    """A loaded server in this process, counting arrivals as the runner sets it (so its
    batchers see requests read and not yet started)."""
    server = Server(ServerConfig.model_validate(config), folder)
    server.counts_arrivals = True
    server.load()
    return server


def connect(server: Server, state: ServerState, transport: Recording | None = None) -> tuple[Any, Recording]:
    """A connection to `server`'s own HTTP protocol (registered in the listener's `state`)."""
    config = uvicorn_config(server)
    config.load()
    protocol = config.http_protocol_class(config, state, {}, asyncio.get_running_loop())
    transport = transport or Recording()
    protocol.connection_made(transport)
    return protocol, transport


def test_a_direct_answer_waits_for_the_loops_turn_only_beside_other_connections(models: Models) -> None:
    """Alone, a connection's request is answered inside the read callback. Beside another
    connection it is answered on the loop's next turn; a client gone in between gets nothing
    written, and its arrival is counted off (else the batchers would never look quiet again);
    a client that stays gets the model's answer."""
    server = in_process({"models": [model_entry(models, "iris")]}, models.folder)
    request = post("/v2/models/iris/infer", json_body(models.iris[:1]))
    state = ServerState()  # the listener's: every connection registers in it

    async def one(beside: int, leaves: bool = False) -> tuple[list[bytes], list[bytes]]:
        others = [connect(server, state) for _ in range(beside)]
        protocol, transport = connect(server, state)
        protocol.data_received(request)
        at_once = list(transport.written)
        if leaves:
            protocol.connection_lost(None)
        for _ in range(20):  # the deferred answer's turn, and a task's if one was started
            await asyncio.sleep(0)
        for other, _ in [*others, (protocol, None)]:
            other.connection_lost(None)
        return at_once, transport.written

    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        alone_at_once, alone = runner.run(one(beside=0))
        beside_at_once, beside = runner.run(one(beside=1))
        assert server.arrived == 0
        gone_at_once, gone = runner.run(one(beside=1, leaves=True))
    assert len(alone_at_once) == 1 and alone == alone_at_once
    assert beside_at_once == [] and len(beside) == 1
    assert gone_at_once == [] and gone == []
    assert server.arrived == 0
    label, _ = run(session((models.folder / "iris.onnx").read_bytes()), models.iris[:1])
    for written in (alone, beside):
        assert written[0].startswith(b"HTTP/1.1 200 ")
        assert json.loads(written[0].partition(b"\r\n\r\n")[2])["outputs"][0]["data"] == label.tolist()


def test_a_model_too_quick_to_gain_from_merging_runs_inline_while_others_wait(models: Models) -> None:
    """iris with batching on (8 rows, no delay). Lone requests run inline and time their run
    (the quickest one-row run counts). With a quick model's time,
    requests read in one turn, which would otherwise wait for each other and merge, run inline
    one by one: the batcher never runs. With a slow model's time they merge. Every answer is
    the model's."""
    server = in_process({"models": [model_entry(models, "iris", max_batch_size=8, max_delay_ms=0)]}, models.folder)
    entry = server.models["iris"]["1"]
    assert entry.batcher is not None
    state = ServerState()
    rows = [models.iris[i : i + 1] for i in range(4)]

    async def together(count: int) -> list[bytes]:
        """`count` connections, each sending a request of one row in the same turn; their answers."""
        loop = asyncio.get_running_loop()
        bodies = [json_body(row) for row in rows[:count]]
        connections = [connect(server, state) for _ in range(count)]
        for (protocol, _), body in zip(connections, bodies, strict=True):
            protocol.data_received(post("/v2/models/iris/infer", body))
        deadline = loop.time() + 30  # a merged run answers from the batch thread
        while not all(transport.written for _, transport in connections) and loop.time() < deadline:
            await asyncio.sleep(0.001)
        for protocol, _ in connections:
            protocol.connection_lost(None)
        return [b"".join(transport.written) for _, transport in connections]

    def labels(answers: list[bytes]) -> list[object]:
        return [json.loads(a.partition(b"\r\n\r\n")[2])["outputs"][0]["data"] for a in answers]

    local = session((models.folder / "iris.onnx").read_bytes())
    expected = [run(local, row)[0].tolist() for row in rows]
    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        timed = []
        for _ in range(5):  # alone: inline, and timed (the quickest run counts; the first is cold)
            assert labels(runner.run(together(1))) == expected[:1]
            timed.append(entry.lone_run)
        assert 0 < timed[-1] == min(timed) < 0.05 and entry.batcher.executions == 0
        # The decision, apart from this machine's speed: what a quick model (10 us) and a slow
        # one (1 ms) measure.
        entry.lone_run = 10e-6
        assert labels(runner.run(together(4))) == expected
        assert entry.batcher.executions == 0
        entry.lone_run = 1e-3
        assert labels(runner.run(together(4))) == expected
        assert entry.batcher.executions >= 1  # merged
        runner.run(server.shutdown())


class Resetting(Recording):
    """A peer that sent its bytes and reset the connection: the first write fails, and the
    transport is closing from then on (as uvloop's on a reset: closing at once, connection_lost
    on a later turn)."""

    def __init__(self) -> None:
        super().__init__()
        self.closing = False
        self.protocol: Any = None

    def write(self, data: bytes | bytearray | memoryview) -> None:
        if not self.closing:
            self.closing = True
            asyncio.get_running_loop().call_soon(self.protocol.connection_lost, ConnectionResetError())

    def is_closing(self) -> bool:
        return self.closing

    def close(self) -> None:
        self.closing = True


@pytest.mark.parametrize("first", ["/v2/models/iris/infer", "/v2/models/iris/infer?"])
def test_requests_pipelined_behind_a_reset_are_counted_off(models: Models, first: str) -> None:
    """Two requests pipelined on one connection (another connection open), then a reset: the
    first answer's write fails, so uvicorn never starts the pipelined second. Its arrival is
    counted off when the connection is lost, whether the first took the direct path or the
    ASGI one (`?`); left counted, the batchers would never look quiet again."""
    server = in_process({"models": [model_entry(models, "iris", max_batch_size=8, max_delay_ms=0)]}, models.folder)
    state = ServerState()

    async def scenario() -> int:
        loop = asyncio.get_running_loop()
        idle, _ = connect(server, state)
        resetting = Resetting()
        reset, _ = connect(server, state, resetting)
        resetting.protocol = reset
        body = json_body(models.iris[:1])
        reset.data_received(post(first, body) + post("/v2/models/iris/infer", body))  # one read
        assert server.arrived == 2
        deadline = loop.time() + 10
        while server.arrived and loop.time() < deadline:
            await asyncio.sleep(0.001)
        idle.connection_lost(None)
        return server.arrived

    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        assert runner.run(scenario()) == 0
        runner.run(server.shutdown())


def test_bad_bytes_behind_a_request_get_their_400_after_its_answer(server: Running, models: Models) -> None:
    """A whole request, then bytes that are no HTTP, in one send, with another connection open
    (so the answer waits for the loop's turn): the request's 200, then the 400 that closes."""
    label, _ = run(session((models.folder / "iris.onnx").read_bytes()), models.iris[:1])
    request = post("/v2/models/iris/infer", json_body(models.iris[:1]), "authorization: Bearer k")
    with socket.create_connection(("127.0.0.1", server.port), timeout=30) as idle:
        idle.sendall(b"GET /v2/health/live HTTP/1.1\r\nhost: x\r\n\r\n")
        assert idle.recv(65536).startswith(b"HTTP/1.1 200 ")  # open, and known to the server
        with socket.create_connection(("127.0.0.1", server.port), timeout=30) as sock:
            sock.sendall(request + b"NOT HTTP AT ALL\r\n\r\n")
            received = b""
            while chunk := sock.recv(65536):  # the server closes after the 400
                received += chunk
    head, _, rest = received.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200 ")
    length = int(next(line.split(b":")[1] for line in head.split(b"\r\n") if line.startswith(b"content-length")))
    assert json.loads(rest[:length])["outputs"][0]["data"] == label.tolist()
    assert rest[length:].startswith(b"HTTP/1.1 400 ")


def mlp_onnx(path: Path) -> None:
    """A 4 -> 1024 -> 1024 -> 3 perceptron: a one-row run takes about 100 us, an empty one a few."""
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(0)
    nodes, weights, previous = [], [], "input"
    for i, (a, b) in enumerate([(4, 1024), (1024, 1024), (1024, 3)]):
        weights.append(numpy_helper.from_array((rng.standard_normal((a, b)) * 0.05).astype(np.float32), f"w{i}"))
        nodes.append(helper.make_node("MatMul", [previous, f"w{i}"], [f"m{i}"]))
        previous = f"m{i}"
        if i < 2:
            nodes.append(helper.make_node("Relu", [previous], [f"r{i}"]))
            previous = f"r{i}"
    nodes.append(helper.make_node("Identity", [previous], ["output"]))
    graph = helper.make_graph(
        nodes,
        "mlp",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["N", 4])],
        [helper.make_tensor_value_info("output", TensorProto.FLOAT, ["N", 3])],
        weights,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    path.write_bytes(model.SerializeToString())


def test_an_empty_request_does_not_time_the_model(models: Models, tmp_path: Path) -> None:
    """A request of 0 rows runs inline in microseconds on any model: taken as the model's lone
    run, it would switch merging off for a slow model for good. Only one-row runs time it."""
    mlp_onnx(tmp_path / "mlp.onnx")
    model = {"name": "mlp", "version": 1, "path": "mlp.onnx", "max_batch_size": 8, "max_delay_ms": 0}
    server = in_process({"models": [model]}, tmp_path)
    entry = server.models["mlp"]["1"]

    async def alone(x: np.ndarray) -> bytes:
        protocol, transport = connect(server, ServerState())
        protocol.data_received(post("/v2/models/mlp/infer", json_body(x)))
        protocol.connection_lost(None)
        return b"".join(transport.written)

    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        for _ in range(5):
            assert runner.run(alone(np.ones((1, 4), np.float32))).startswith(b"HTTP/1.1 200 ")
        one_row = entry.lone_run
        for _ in range(5):
            assert runner.run(alone(np.ones((0, 4), np.float32))).startswith(b"HTTP/1.1 200 ")
        runner.run(server.shutdown())
    assert one_row > 0 and entry.lone_run == one_row


def test_a_request_missing_several_inputs_names_every_one(tmp_path: Path) -> None:
    import onnx
    from onnx import TensorProto, helper

    from mlops_iac.serving.config import ModelConfig
    from mlops_iac.serving.protocol import ClientError
    from mlops_iac.serving.runtime import ModelRuntime

    names = ["a", "b", "c"]
    graph = helper.make_graph(
        [helper.make_node("Sum", names, ["out"])],
        "three",
        [helper.make_tensor_value_info(n, TensorProto.FLOAT, [None, 1]) for n in names],
        [helper.make_tensor_value_info("out", TensorProto.FLOAT, [None, 1])],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.save(model, tmp_path / "three.onnx")
    runtime = ModelRuntime(ModelConfig(name="three", version=1, path="three.onnx"), tmp_path)
    with pytest.raises(ClientError) as raised:
        runtime.check({"a": np.zeros((1, 1), np.float32)}, None)
    assert "missing input(s) 'b' (FP32 [-1, 1]), 'c' (FP32 [-1, 1])" in str(raised.value)
