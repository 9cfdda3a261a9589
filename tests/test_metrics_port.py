"""The metrics port: with `auth: key`, Prometheus scrapes /metrics there without the key,
while the main port keeps every route, /metrics included, behind it."""

from __future__ import annotations

import http.client
import json

import pytest

from .conftest import free_port
from .server_fixtures import Models, build_models, model_entry, running_server


@pytest.fixture(scope="module")
def models(tmp_path_factory: pytest.TempPathFactory) -> Models:
    return build_models(tmp_path_factory.mktemp("metrics-port-models"))


def get(port: int, method: str, path: str, body: bytes | None = None, **headers: str) -> tuple[int, bytes]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    try:
        conn.request(method, path, body=body, headers=headers)
        response = conn.getresponse()
        return response.status, response.read()
    finally:
        conn.close()


def test_the_metrics_port_answers_without_the_key_and_nothing_else(models: Models) -> None:
    metrics_port = free_port()
    config = {"models": [model_entry(models, "iris")], "auth": True, "metrics_port": metrics_port}
    body = json.dumps(
        {"inputs": [{"name": "input", "datatype": "FP32", "shape": [1, 4], "data": models.iris[0].tolist()}]}
    ).encode()
    with running_server(models, config, env={"MLOPS_IAC_API_KEY": "s3cret"}) as server:
        assert server.request("POST", "/v2/models/iris/infer", body, {"Authorization": "Bearer s3cret"})[0] == 200
        assert server.request("GET", "/metrics")[0] == 401  # the main port: behind the key
        assert server.request("GET", "/metrics", None, {"Authorization": "Bearer s3cret"})[0] == 200
        status, text = get(metrics_port, "GET", "/metrics")
        assert status == 200
        assert 'mlops_requests_total{model="iris",status="200",version="1"} 1.0' in text.decode()
        assert "mlops_ready 1.0" in text.decode()
        assert get(metrics_port, "GET", "/v2/health/ready") == (200, b'{"ready":true}')
        assert get(metrics_port, "GET", "/v2/health/live")[0] == 200
        # No model route, no metadata, no OpenAPI on the plain port, with or without a key.
        assert get(metrics_port, "POST", "/v2/models/iris/infer", body)[0] == 404
        assert get(metrics_port, "POST", "/v2/models/iris/infer", body, Authorization="Bearer s3cret")[0] == 404
        assert get(metrics_port, "GET", "/v2")[0] == 404
        conn = http.client.HTTPConnection("127.0.0.1", metrics_port, timeout=30)
        try:  # a wrong method says which one is right, as on the main port
            conn.request("POST", "/metrics", body=b"")
            response = conn.getresponse()
            assert (response.status, response.getheader("allow")) == (405, "GET")
        finally:
            conn.close()
        process = server.process
    assert process.returncode is not None  # SIGTERM stopped both listeners
    with pytest.raises(OSError):
        get(metrics_port, "GET", "/metrics")
