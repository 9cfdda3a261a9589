"""Batch isolation: random mixes of valid and invalid concurrent requests through the dynamic
batcher; every answer must equal onnxruntime run in process on that request alone.

The 10,000-request run drives the ASGI application in process (the server's whole request
path: parsing, checks, batcher, encoding; no sockets), so it takes seconds; a smaller run goes
through real HTTP to a real server process.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from mlops_iac.serving.app import Server
from mlops_iac.serving.config import ServerConfig

from .server_fixtures import Models, Running, model_entry, multi_model, running_server

KINDS = ("valid", "valid", "valid", "rows_disagree", "bad_index", "wrong_width", "wrong_type", "big")


@dataclass
class Case:
    kind: str
    body: bytes
    feeds: dict[str, np.ndarray]


def make_case(rng: np.random.Generator, kind: str, tag: int) -> Case:
    rows = int(rng.integers(1, 7)) if kind != "big" else int(rng.integers(40, 60))
    # Values unique to this request, so a row of anyone else's would not compare equal.
    a = (tag * 1000 + rng.integers(0, 1000, size=(rows, 3))).astype(np.float32)
    b = rng.standard_normal((rows, 2)).astype(np.float32)
    i = rng.integers(0, 10, size=(rows, 1)).astype(np.int64)
    inputs = [("a", "FP32", a), ("b", "FP32", b), ("i", "INT64", i)]
    if kind == "rows_disagree":
        inputs[1] = ("b", "FP32", rng.standard_normal((rows + 1, 2)).astype(np.float32))
    elif kind == "bad_index":  # passes every check; fails inside the run, wherever it is batched
        bad = i.copy()
        bad[int(rng.integers(0, rows)), 0] = 10 + int(rng.integers(0, 5))
        inputs[2] = ("i", "INT64", bad)
    elif kind == "wrong_width":
        inputs[0] = ("a", "FP32", np.zeros((rows, 4), dtype=np.float32))
    elif kind == "wrong_type":
        inputs[2] = ("i", "INT32", i.astype(np.int32))
    body = json.dumps(
        {
            "id": str(tag),
            "inputs": [
                {"name": n, "datatype": t, "shape": list(x.shape), "data": x.ravel().tolist()} for n, t, x in inputs
            ],
        }
    )
    return Case(kind, body.encode(), {n: x for n, _, x in inputs})


def expected(session: ort.InferenceSession, case: Case) -> list[np.ndarray] | None:
    """What the request alone gives in process; None where it must be refused with a 400."""
    if case.kind not in ("valid", "big"):
        return None
    return session.run(["y", "g"], case.feeds)  # type: ignore[no-any-return]


def check(case: Case, want: list[np.ndarray] | None, status: int, body: bytes) -> None:
    doc = json.loads(body)
    if want is None:
        assert status == 400, (case.kind, status, doc)
        return
    assert status == 200, (case.kind, doc)
    outputs = {o["name"]: o for o in doc["outputs"]}
    for name, value in zip(("y", "g"), want, strict=True):
        got = np.asarray(outputs[name]["data"], dtype=value.dtype).reshape(outputs[name]["shape"])
        assert np.array_equal(got, value), (case.kind, name)  # exact: no other client's rows
    assert doc["id"] == json.loads(case.body)["id"]


@pytest.fixture(scope="module")
def folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("multi")
    multi_model(path)
    return path


async def call(app: Server, body: bytes) -> tuple[int, bytes]:
    """One POST through the ASGI application, as uvicorn would make it."""
    scope = {
        "type": "http",
        "http_version": "1.1",
        "method": "POST",
        "path": "/v2/models/multi/infer",
        "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())],
    }
    sent: list[dict[str, Any]] = []
    messages = iter([{"type": "http.request", "body": body, "more_body": False}])

    async def receive() -> dict[str, Any]:
        return next(messages)

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    await app(scope, receive, send)
    return sent[0]["status"], sent[1]["body"]


TOTAL = {"requests": 0, "batched": 0}


def serve_concurrently(
    folder: Path, max_batch: int, delay_ms: float, cases: list[Any]
) -> tuple[Server, ort.InferenceSession, list[tuple[int, bytes]]]:
    """Every case sent at once to an in-process server (its batcher at these settings); the
    server, an onnxruntime session of the same model for the expected answers, and the answers."""
    config = ServerConfig.model_validate(
        {
            "models": [
                {
                    "name": "multi",
                    "version": 1,
                    "path": "multi.onnx",
                    "max_batch_size": max_batch,
                    "max_delay_ms": delay_ms,
                }
            ]
        }
    )
    app = Server(config, folder)
    app.load()

    async def everything() -> list[tuple[int, bytes]]:
        try:
            return await asyncio.gather(*(call(app, c.body) for c in cases))
        finally:
            await app.shutdown()

    return app, ort.InferenceSession(str(folder / "multi.onnx")), asyncio.run(everything())


def run_mix(folder: Path, seed: int, invalid_share: float, max_batch: int, delay_ms: float, count: int) -> None:
    rng = np.random.default_rng(seed)
    kinds = [
        str(rng.choice(KINDS[3:]))
        if rng.random() < invalid_share
        else str(rng.choice(["valid", "big"], p=[0.95, 0.05]))
        for _ in range(count)
    ]
    cases = [make_case(rng, kind, tag) for tag, kind in enumerate(kinds)]
    app, session, answers = serve_concurrently(folder, max_batch, delay_ms, cases)
    for case, (status, body) in zip(cases, answers, strict=True):
        check(case, expected(session, case), status, body)
    batcher = app.models["multi"]["1"].batcher
    assert batcher is not None
    TOTAL["requests"] += count
    TOTAL["batched"] += count - batcher.executions  # requests that shared a run with another


@settings(
    max_examples=20,
    deadline=None,
    derandomize=True,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(
    seed=st.integers(0, 2**32 - 1),
    invalid_share=st.floats(0.0, 0.7),
    max_batch=st.sampled_from([2, 8, 32]),
    delay_ms=st.sampled_from([0.0, 0.5, 2.0]),
)
def _mixes(folder: Path, seed: int, invalid_share: float, max_batch: int, delay_ms: float) -> None:
    run_mix(folder, seed, invalid_share, max_batch, delay_ms, 500)


def test_ten_thousand_mixed_requests_never_cross_clients(folder: Path) -> None:
    TOTAL.update(requests=0, batched=0)
    _mixes(folder)
    assert TOTAL["requests"] >= 10_000
    assert TOTAL["batched"] > TOTAL["requests"] // 2  # batches really formed: the property was tested


def test_a_failing_request_fails_only_itself_in_a_batch(folder: Path) -> None:
    """Two requests per batch, one of them failing inside the run: the other still answers."""
    rng = np.random.default_rng(7)
    cases = [make_case(rng, "bad_index" if n % 2 else "valid", n) for n in range(40)]
    app, session, answers = serve_concurrently(folder, 64, 5, cases)
    for case, (status, body) in zip(cases, answers, strict=True):
        check(case, expected(session, case), status, body)
        if case.kind == "bad_index":
            assert "indices element out of data bounds" in json.loads(body)["error"]
    batcher = app.models["multi"]["1"].batcher
    assert batcher is not None and batcher.executions < len(cases)  # they did share runs


@pytest.fixture(scope="module")
def server(folder: Path) -> Iterator[Running]:
    models = Models(folder, np.empty(0), np.empty(0))
    config = {"models": [model_entry(models, "multi", max_batch_size=16, max_delay_ms=2)]}
    with running_server(models, config) as running:
        yield running


def test_mixed_requests_over_http(server: Running, folder: Path) -> None:
    rng = np.random.default_rng(11)
    session = ort.InferenceSession(str(folder / "multi.onnx"))
    cases = [make_case(rng, str(rng.choice(KINDS)), n) for n in range(400)]

    def one(case: Case) -> tuple[int, bytes]:
        status, _, body = server.request(
            "POST", "/v2/models/multi/infer", case.body, {"Content-Type": "application/json"}
        )
        return status, body

    with ThreadPoolExecutor(16) as pool:
        answers = list(pool.map(one, cases))
    for case, (status, body) in zip(cases, answers, strict=True):
        check(case, expected(session, case), status, body)
    status, stats = server.json("GET", "/v2/models/multi/stats")
    assert status == 200
    [model] = stats["model_stats"]
    valid = sum(c.kind in ("valid", "big") for c in cases)
    assert model["inference_stats"]["success"]["count"] == valid
    assert model["inference_count"] == sum(c.feeds["a"].shape[0] for c in cases if c.kind in ("valid", "big"))
    assert model["execution_count"] < valid  # merged runs happened over HTTP too
