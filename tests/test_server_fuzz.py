"""The server against hostile input: schemathesis from its OpenAPI document, and a hypothesis
fuzz of over 10,000 malformed requests. No answer may be a 5xx, the server must stay ready,
and its resident memory must stay flat."""

from __future__ import annotations

import http.client
import json
from collections.abc import Iterator
from typing import Any

import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from mlops_iac.serving.openapi import document

from .server_fixtures import Models, Running, build_models, model_entry, running_server


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Running]:
    models: Models = build_models(tmp_path_factory.mktemp("fuzz-models"))
    config = {"models": [model_entry(models, "iris")], "max_body_bytes": 256 * 1024}
    with running_server(models, config) as running:
        yield running


schema = schemathesis.openapi.from_dict(document())


@schema.parametrize()
@settings(max_examples=40, deadline=None, suppress_health_check=list(HealthCheck))
def test_schemathesis_finds_no_server_error(case: Any, server: Running) -> None:
    if "name" in (case.path_parameters or {}) and case.path_parameters["name"] == "":
        return
    response = case.call(base_url=f"http://{server.url}")
    assert response.status_code < 500, (case.method, case.formatted_path, response.text)


VALID = {"id": "x", "inputs": [{"name": "input", "datatype": "FP32", "shape": [1, 4], "data": [1.0, 2.0, 3.0, 4.0]}]}
scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-(2**70), 2**70),
    st.floats(allow_nan=False, allow_infinity=False),
    st.text(max_size=8),
    st.sampled_from(["FP32", "INT64", "BYTES", "input", "label", -1, 0]),
)
values = st.recursive(
    scalars,
    lambda inner: st.one_of(st.lists(inner, max_size=5), st.dictionaries(st.text(max_size=8), inner, max_size=4)),
    max_leaves=12,
)


def _mutate(data: st.DataObject) -> Any:
    doc = json.loads(json.dumps(VALID))
    target = data.draw(st.sampled_from(["root", "inputs", "tensor", "field", "outputs", "params"]))
    if target == "root":
        return data.draw(values)
    if target == "inputs":
        doc["inputs"] = data.draw(values)
    elif target == "tensor":
        doc["inputs"][0] = data.draw(values)
    elif target == "field":
        key = data.draw(st.sampled_from(["name", "datatype", "shape", "data", "parameters"]))
        doc["inputs"][0][key] = data.draw(values)
    elif target == "outputs":
        doc["outputs"] = data.draw(values)
    else:
        doc["inputs"][0]["parameters"] = {"binary_data_size": data.draw(values)}
    return doc


def _request(data: st.DataObject) -> tuple[str, str, bytes, dict[str, str]]:
    kind = data.draw(st.sampled_from(["json", "json", "json", "bytes", "binary", "path"]))
    headers: dict[str, str] = {}
    path = "/v2/models/iris/infer"
    if kind == "bytes":
        body = data.draw(st.binary(max_size=200))
    elif kind == "binary":
        head = json.dumps(_mutate(data)).encode()
        body = head + data.draw(st.binary(max_size=64))
        headers["Inference-Header-Content-Length"] = str(
            data.draw(
                st.one_of(
                    st.just(len(head)),
                    st.integers(-5, len(body) + 5),
                    st.text(alphabet=st.characters(min_codepoint=32, max_codepoint=126), max_size=4),
                )
            )
        )
        if data.draw(st.booleans()):
            headers["Content-Encoding"] = data.draw(st.sampled_from(["gzip", "deflate", "br", "x"]))
    elif kind == "path":
        path = data.draw(
            st.sampled_from(
                [
                    "/v2/models//infer",
                    "/v2/models/iris/versions//infer",
                    "/v2/models/iris/versions/1/x/infer",
                    "/v2/models/%2e%2e/infer",
                    "/v2/models/iris/infer/extra",
                    "/v2/models/iris/versions/0/infer",
                ]
            )
        )
        body = json.dumps(VALID).encode()
    else:
        body = json.dumps(_mutate(data), allow_nan=False).encode()
    method = data.draw(st.sampled_from(["POST"] * 8 + ["GET", "PUT"]))
    return method, path, body, headers


class Client:
    """One keep-alive connection; a new one when the server closes it."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
        self.statuses: dict[int, int] = {}

    def send(self, method: str, path: str, body: bytes, headers: dict[str, str]) -> int:
        for _ in range(2):
            try:
                self.conn.request(method, path, body=body, headers=headers)
                response = self.conn.getresponse()
                response.read()
                self.statuses[response.status] = self.statuses.get(response.status, 0) + 1
                return response.status
            except (http.client.HTTPException, ConnectionError):
                self.conn.close()
                self.conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=30)
        raise AssertionError(f"the server stopped answering {method} {path}")


REQUESTS_PER_EXAMPLE = 10
EXAMPLES = 1050  # 10,500 malformed requests in all


def test_ten_thousand_malformed_requests(server: Running) -> None:
    client = Client(server.port)
    for _ in range(200):  # warm up before the memory baseline
        client.send("POST", "/v2/models/iris/infer", json.dumps(VALID).encode(), {})
    baseline = server.rss_kib()

    @settings(max_examples=EXAMPLES, deadline=None, database=None, suppress_health_check=list(HealthCheck))
    @given(data=st.data())
    def fuzz(data: st.DataObject) -> None:
        for _ in range(REQUESTS_PER_EXAMPLE):
            method, path, body, headers = _request(data)
            status = client.send(method, path, body, headers)
            assert status < 500, (method, path, body[:300], headers, status)

    fuzz()
    sent = sum(client.statuses.values()) - 200
    assert sent >= 10_000, sent
    assert server.json("GET", "/v2/health/ready") == (200, {"ready": True})
    assert sum(n for s, n in client.statuses.items() if 400 <= s < 500) > 5_000  # mostly refused
    grown = server.rss_kib() - baseline
    assert grown < 30 * 1024, f"resident memory grew by {grown} KiB over {sent} requests"
    status, _ = server.json("POST", "/v2/models/iris/infer", VALID)
    assert status == 200
