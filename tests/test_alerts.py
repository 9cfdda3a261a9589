"""Alert rules: promtool checks and unit-tests them; a real Prometheus sees them fire."""

from __future__ import annotations

import json
import shutil
import subprocess
import threading
import time
import urllib.parse
import urllib.request
from pathlib import Path
from typing import Any

import pytest
import yaml

from mlops_iac.model_manifests import series_selector
from mlops_iac.monitoring.alerts import rule_groups
from mlops_iac.resolve import load

from .conftest import ROOT, free_port, require, wait_http
from .server_fixtures import Models, build_models, model_entry, running_server

SERVICE = "iris-v1-8f03a2cb"


def deployment() -> Any:
    return next(d for d in load(ROOT / "examples/production/mlops.yaml").resolved.deployments if d.name == "iris-prod")


def promtool() -> str:
    found = shutil.which("promtool")
    if found is None:
        require("promtool (apt-get install prometheus)")
    assert found is not None
    return found


def test_rules_pass_promtool_check_and_unit_tests(tmp_path: Path) -> None:
    dep = deployment()
    rules = tmp_path / "rules.yml"
    rules.write_text(yaml.safe_dump({"groups": rule_groups(dep, series_selector("models", "iris"))}))
    checked = subprocess.run([promtool(), "check", "rules", str(rules)], capture_output=True, text=True)
    assert checked.returncode == 0 and "SUCCESS: 4 rules found" in checked.stdout, checked.stdout + checked.stderr
    labels = f'namespace="models",service="{SERVICE}",model="iris",version="1"'
    common = {"deployment": "iris-prod", "model": "iris"}
    annotations = {r["alert"]: r["annotations"] for r in rule_groups(dep, "x")[0]["rules"]}

    def expected(alert: str, severity: str, **extra: str) -> dict[str, Any]:
        desc = annotations[alert]["description"].replace("{{ $labels.version }}", "1")
        return {
            "exp_labels": {"severity": severity, **common, **extra},
            "exp_annotations": {"summary": annotations[alert]["summary"], "description": desc},
        }

    tests = {
        "rule_files": [str(rules)],
        "evaluation_interval": "1m",
        "tests": [
            {
                "interval": "1m",
                "input_series": [
                    {"series": f'mlops_requests_total{{{labels},status="200"}}', "values": "0+60x30"},
                    {"series": f'mlops_requests_total{{{labels},status="400"}}', "values": "0+6x30"},
                    {"series": f'mlops_request_seconds_bucket{{{labels},le="0.05"}}', "values": "0+6x30"},
                    {"series": f'mlops_request_seconds_bucket{{{labels},le="0.1"}}', "values": "0+66x30"},
                    {"series": f'mlops_request_seconds_bucket{{{labels},le="+Inf"}}', "values": "0+66x30"},
                    {
                        "series": f'mlops_collection_dropped_total{{namespace="models",service="{SERVICE}"}}',
                        "values": "0+1x30",
                    },
                    {
                        "series": f'up{{namespace="models",service="{SERVICE}",instance="10.0.0.7:8082"}}',
                        "values": "1x5 0x25",
                    },
                ],
                "alert_rule_test": [
                    {
                        "eval_time": "20m",
                        "alertname": "ModelLatencyP99High",
                        "exp_alerts": [expected("ModelLatencyP99High", "warning", version="1")],
                    },
                    {
                        "eval_time": "20m",
                        "alertname": "ModelErrorRateHigh",
                        "exp_alerts": [expected("ModelErrorRateHigh", "critical", version="1")],
                    },
                    {
                        "eval_time": "20m",
                        "alertname": "ModelDataCollectionDropping",
                        "exp_alerts": [expected("ModelDataCollectionDropping", "warning")],
                    },
                    {
                        "eval_time": "20m",
                        "alertname": "ModelTargetDown",
                        "exp_alerts": [
                            {
                                "exp_labels": {
                                    "severity": "critical",
                                    **common,
                                    "namespace": "models",
                                    "service": SERVICE,
                                    "instance": "10.0.0.7:8082",
                                },
                                "exp_annotations": {
                                    "summary": annotations["ModelTargetDown"]["summary"],
                                    "description": annotations["ModelTargetDown"]["description"].replace(
                                        "{{ $labels.instance }}", "10.0.0.7:8082"
                                    ),
                                },
                            }
                        ],
                    },
                ],
            },
            {
                "interval": "1m",
                "input_series": [  # healthy: fast, no errors, nothing dropped
                    {"series": f'mlops_requests_total{{{labels},status="200"}}', "values": "0+60x30"},
                    {"series": f'mlops_request_seconds_bucket{{{labels},le="0.01"}}', "values": "0+60x30"},
                    {"series": f'mlops_request_seconds_bucket{{{labels},le="+Inf"}}', "values": "0+60x30"},
                    {
                        "series": f'mlops_collection_dropped_total{{namespace="models",service="{SERVICE}"}}',
                        "values": "0x30",
                    },
                    {
                        "series": f'up{{namespace="models",service="{SERVICE}",instance="10.0.0.7:8082"}}',
                        "values": "1x30",
                    },
                ],
                "alert_rule_test": [{"eval_time": "20m", "alertname": name, "exp_alerts": []} for name in annotations],
            },
        ],
    }
    spec = tmp_path / "tests.yml"
    spec.write_text(yaml.safe_dump(tests))
    tested = subprocess.run([promtool(), "test", "rules", str(spec)], capture_output=True, text=True)
    assert tested.returncode == 0, tested.stdout + tested.stderr


@pytest.fixture(scope="module")
def models(tmp_path_factory: pytest.TempPathFactory) -> Models:
    return build_models(tmp_path_factory.mktemp("alert-models"))


def rendered() -> list[dict[str, Any]]:
    """The production example's Kubernetes objects, as `mlops-iac render` writes them."""
    from click.testing import CliRunner

    from mlops_iac.cli import main

    result = CliRunner().invoke(
        main, ["render", "-f", str(ROOT / "examples/production/mlops.yaml"), "--target", "prod", "--format", "json"]
    )
    assert result.exit_code == 0, result.output
    text = result.stdout  # without the warnings validation printed on stderr
    document = json.loads(text[text.index("\n{") + 1 if not text.startswith("{") else 0 :])
    return list(document["items"])


def _one(objects: list[dict[str, Any]], kind: str, name: str) -> dict[str, Any]:
    return next(o for o in objects if o["kind"] == kind and o["metadata"]["name"] == name)


def scrape_target(objects: list[dict[str, Any]], name: str) -> tuple[str, int]:
    """(path, container port) that Prometheus scrapes, as the operator resolves the
    ServiceMonitor: endpoint port name -> the Service's port -> its targetPort -> the
    container's port of that name."""
    endpoint = _one(objects, "ServiceMonitor", name)["spec"]["endpoints"][0]
    service = _one(objects, "Service", name)
    port = next(p for p in service["spec"]["ports"] if p["name"] == endpoint["port"])
    target = port.get("targetPort", port["port"])
    container = _one(objects, "Deployment", name)["spec"]["template"]["spec"]["containers"][0]
    if isinstance(target, str):
        target = next(p["containerPort"] for p in container["ports"] if p["name"] == target)
    return endpoint.get("path", "/metrics"), int(target)


def settings_configmap(objects: list[dict[str, Any]], name: str) -> str:
    """The ConfigMap the Deployment reads its server settings from (named by their digest)."""
    container = _one(objects, "Deployment", name)["spec"]["template"]["spec"]["containers"][0]
    return str(
        next(
            e["valueFrom"]["configMapKeyRef"]["name"]
            for e in container["env"]
            if "configMapKeyRef" in e.get("valueFrom", {})
        )
    )


def test_a_real_prometheus_scrapes_an_auth_key_server_and_sees_the_alerts_fire(models: Models, tmp_path: Path) -> None:
    """The rendered ServiceMonitor's scrape against a real server with `auth: key` (its
    rendered settings), the rendered PrometheusRule's alerts: quiet while healthy; slow
    requests, errors, collection drops and a stopped server each fire."""
    prometheus = shutil.which("prometheus")
    if prometheus is None:
        require("prometheus (apt-get install prometheus)")
    assert prometheus is not None
    objects = rendered()
    path, container_port = scrape_target(objects, SERVICE)
    settings = json.loads(_one(objects, "ConfigMap", settings_configmap(objects, SERVICE))["data"]["server.json"])
    assert settings["auth"] is True  # the production example: inference needs the key
    pod = {8080: free_port(), **({settings["metrics_port"]: free_port()} if settings.get("metrics_port") else {})}
    assert container_port in pod, f"the ServiceMonitor scrapes container port {container_port}: nothing listens"
    (models.folder / "slow.py").write_text(
        "import time\n"
        "def preprocess(request):\n"
        "    x = request.inputs['input']\n"
        "    if x[0, 0] > 100: time.sleep(0.3)  # a slow request, on demand\n"
        "    return {'input': x}\n"
    )
    receiver = _EventReceiver()  # stands in for the CloudEvents receiver (KServe's logger, a broker)
    config = {
        "models": [model_entry(models, "iris", handler="slow.py")],
        "auth": settings["auth"],
        "metrics_port": pod.get(settings.get("metrics_port") or 0),
        "collection": {"enabled": True, "sample_rate": 1.0, "sink": "http", "url": receiver.url, "queue_size": 20},
    }
    rule = _one(objects, "PrometheusRule", "iris-prod")
    groups = json.loads(
        json.dumps(rule["spec"]["groups"])
        .replace(json.dumps(series_selector("models", "iris"))[1:-1], 'job=\\"mlops\\"')
        .replace("[5m]", "[20s]")
        .replace('"for": "5m"', '"for": "0s"')
    )
    rules = tmp_path / "rules.yml"
    rules.write_text(yaml.safe_dump({"groups": groups}))
    (tmp_path / "prometheus.yml").write_text(
        yaml.safe_dump(
            {
                "global": {"scrape_interval": "1s", "evaluation_interval": "1s"},
                "rule_files": [str(rules)],
                "scrape_configs": [
                    {
                        "job_name": "mlops",
                        "metrics_path": path,
                        "static_configs": [{"targets": [f"127.0.0.1:{pod[container_port]}"]}],
                    }
                ],
            }
        )
    )
    names = {r["alert"] for r in groups[0]["rules"]}
    assert names == {"ModelLatencyP99High", "ModelErrorRateHigh", "ModelDataCollectionDropping", "ModelTargetDown"}
    port = free_port()
    with open(tmp_path / "prometheus.log", "wb") as log:
        process = subprocess.Popen(
            [
                prometheus,
                f"--config.file={tmp_path / 'prometheus.yml'}",
                f"--storage.tsdb.path={tmp_path / 'data'}",
                f"--web.listen-address=127.0.0.1:{port}",
            ],
            stdout=log,
            stderr=log,
        )
    try:
        with running_server(models, config, env={"MLOPS_IAC_API_KEY": "s3cret"}, port=pod[8080]) as server:
            wait_http(f"http://127.0.0.1:{port}/-/ready", timeout=60)
            mode = {"bad": False}
            stop = threading.Event()
            driver = threading.Thread(target=_drive, args=(server, models, stop, mode), daemon=True)
            driver.start()
            try:
                # Healthy: scraped without the key (up is 1), requests counted, nothing pending.
                _wait_query(port, 'sum(rate(mlops_requests_total{job="mlops",status="200"}[20s])) > 0')
                _wait_query(port, 'count_over_time(up{job="mlops"}[20s]) >= 15')
                assert _query(port, 'up{job="mlops"}') == ["1"]
                assert _alerts(port) == {}, _alerts(port)
                mode["bad"] = True
                receiver.close()  # the sink goes down: the collector's queue fills and drops
                firing = _wait_firing(port, names - {"ModelTargetDown"}, timeout=90)
            finally:
                stop.set()
                driver.join(10)
        down = _wait_firing(port, {"ModelTargetDown"}, timeout=60)  # the server stopped
    finally:
        process.terminate()
        process.wait(30)
        receiver.close()
    assert firing == names - {"ModelTargetDown"}
    assert "ModelTargetDown" in down


class _EventReceiver:
    def __init__(self) -> None:
        import http.server

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                self.rfile.read(int(self.headers.get("Content-Length", 0)))
                self.send_response(202)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *args: Any) -> None:
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()
        self.closed = False

    def close(self) -> None:
        if not self.closed:
            self.closed = True
            self.server.shutdown()
            self.server.server_close()


def _drive(server: Any, models: Models, stop: threading.Event, mode: dict[str, bool]) -> None:
    def body(data: list[float]) -> bytes:
        return json.dumps(
            {"inputs": [{"name": "input", "datatype": "FP32", "shape": [1, len(data)], "data": data}]}
        ).encode()

    fast, slow, bad = body(models.iris[0].tolist()), body([500.0, 1.0, 1.0, 1.0]), body([1.0, 2.0, 3.0])
    key = {"Authorization": "Bearer s3cret"}
    i = 0
    while not stop.is_set():
        chosen = (slow if i % 5 == 0 else bad if i % 5 == 1 else fast) if mode["bad"] else fast
        server.request("POST", "/v2/models/iris/infer", chosen, key)
        if not mode["bad"]:
            time.sleep(0.01)  # a calm rate while healthy
        i += 1


def _query(port: int, expr: str) -> list[str]:
    url = f"http://127.0.0.1:{port}/api/v1/query?" + urllib.parse.urlencode({"query": expr})
    with urllib.request.urlopen(url, timeout=5) as response:
        return [r["value"][1] for r in json.load(response)["data"]["result"]]


def _wait_query(port: int, expr: str, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while not _query(port, expr):
        assert time.monotonic() < deadline, f"no result for {expr}"
        time.sleep(0.5)


def _alerts(port: int) -> dict[str, str]:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/api/v1/alerts", timeout=5) as response:
        return {a["labels"]["alertname"]: a["state"] for a in json.load(response)["data"]["alerts"]}


def _wait_firing(port: int, names: set[str], timeout: float) -> set[str]:
    deadline = time.monotonic() + timeout
    firing: set[str] = set()
    while time.monotonic() < deadline and not names <= firing:
        firing = {name for name, state in _alerts(port).items() if state == "firing"}
        time.sleep(1)
    return firing
