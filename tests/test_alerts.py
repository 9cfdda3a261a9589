"""Alert rules: promtool checks and unit-tests them; a real Prometheus sees them fire."""

from __future__ import annotations

import json
import shutil
import subprocess
import threading
import time
import urllib.request
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import yaml

from mlops_iac.manifests import series_selector
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
    assert checked.returncode == 0 and "SUCCESS: 3 rules found" in checked.stdout, checked.stdout + checked.stderr
    labels = f'namespace="models",service="{SERVICE}",model="iris",version="1"'
    common = {"deployment": "iris-prod", "model": "iris"}
    annotations = {r["alert"]: r["annotations"] for r in rule_groups(dep, "x")[0]["rules"]}

    def expected(alert: str, severity: str, **extra: str) -> dict[str, Any]:
        desc = annotations[alert]["description"].replace("{{ $labels.version }}", "1")
        return {"exp_labels": {"severity": severity, **common, **extra},
                "exp_annotations": {"summary": annotations[alert]["summary"], "description": desc}}

    tests = {"rule_files": [str(rules)], "evaluation_interval": "1m", "tests": [
        {"interval": "1m", "input_series": [
            {"series": f'mlops_requests_total{{{labels},status="200"}}', "values": "0+60x30"},
            {"series": f'mlops_requests_total{{{labels},status="400"}}', "values": "0+6x30"},
            {"series": f'mlops_request_seconds_bucket{{{labels},le="0.05"}}', "values": "0+6x30"},
            {"series": f'mlops_request_seconds_bucket{{{labels},le="0.1"}}', "values": "0+66x30"},
            {"series": f'mlops_request_seconds_bucket{{{labels},le="+Inf"}}', "values": "0+66x30"},
            {"series": f'mlops_collection_dropped_total{{namespace="models",service="{SERVICE}"}}',
             "values": "0+1x30"}],
         "alert_rule_test": [
             {"eval_time": "20m", "alertname": "ModelLatencyP99High",
              "exp_alerts": [expected("ModelLatencyP99High", "warning", version="1")]},
             {"eval_time": "20m", "alertname": "ModelErrorRateHigh",
              "exp_alerts": [expected("ModelErrorRateHigh", "critical", version="1")]},
             {"eval_time": "20m", "alertname": "ModelDataCollectionDropping",
              "exp_alerts": [expected("ModelDataCollectionDropping", "warning")]}]},
        {"interval": "1m", "input_series": [  # healthy: fast, no errors, nothing dropped
            {"series": f'mlops_requests_total{{{labels},status="200"}}', "values": "0+60x30"},
            {"series": f'mlops_request_seconds_bucket{{{labels},le="0.01"}}', "values": "0+60x30"},
            {"series": f'mlops_request_seconds_bucket{{{labels},le="+Inf"}}', "values": "0+60x30"},
            {"series": f'mlops_collection_dropped_total{{namespace="models",service="{SERVICE}"}}',
             "values": "0x30"}],
         "alert_rule_test": [{"eval_time": "20m", "alertname": name, "exp_alerts": []}
                             for name in annotations]}]}
    spec = tmp_path / "tests.yml"
    spec.write_text(yaml.safe_dump(tests))
    tested = subprocess.run([promtool(), "test", "rules", str(spec)], capture_output=True, text=True)
    assert tested.returncode == 0, tested.stdout + tested.stderr


@pytest.fixture(scope="module")
def models(tmp_path_factory: pytest.TempPathFactory) -> Models:
    return build_models(tmp_path_factory.mktemp("alert-models"))


def test_a_real_prometheus_sees_the_alerts_fire(models: Models, tmp_path: Path) -> None:
    prometheus = shutil.which("prometheus")
    if prometheus is None:
        require("prometheus (apt-get install prometheus)")
    assert prometheus is not None
    (models.folder / "slow.py").write_text(
        "import time\n"
        "def preprocess(request):\n"
        "    x = request.inputs['input']\n"
        "    if x[0, 0] > 100: time.sleep(0.3)  # a slow request, on demand\n"
        "    return {'input': x}\n")
    dead = free_port()  # nothing listens: the CloudEvents sink fails, the tiny queue overflows
    config = {"models": [model_entry(models, "iris", handler="slow.py")], "collection": {
        "enabled": True, "sample_rate": 1.0, "sink": "http", "url": f"http://127.0.0.1:{dead}/", "queue_size": 1}}
    with running_server(models, config) as server:
        port = free_port()
        rules = tmp_path / "rules.yml"
        rules.write_text(yaml.safe_dump({"groups": rule_groups(deployment(), 'job="mlops"', window="20s", hold="0s")}))
        (tmp_path / "prometheus.yml").write_text(yaml.safe_dump({
            "global": {"scrape_interval": "1s", "evaluation_interval": "1s"},
            "rule_files": [str(rules)],
            "scrape_configs": [{"job_name": "mlops", "static_configs": [{"targets": [server.url]}]}]}))
        with open(tmp_path / "prometheus.log", "wb") as log:
            process = subprocess.Popen([prometheus, f"--config.file={tmp_path / 'prometheus.yml'}",
                                        f"--storage.tsdb.path={tmp_path / 'data'}",
                                        f"--web.listen-address=127.0.0.1:{port}"], stdout=log, stderr=log)
        try:
            wait_http(f"http://127.0.0.1:{port}/-/ready", timeout=60)
            stop = threading.Event()
            driver = threading.Thread(target=_drive, args=(server, models, stop), daemon=True)
            driver.start()
            firing = _wait_firing(port, {"ModelLatencyP99High", "ModelErrorRateHigh",
                                         "ModelDataCollectionDropping"}, timeout=90)
            stop.set()
            driver.join(10)
        finally:
            process.terminate()
            process.wait(30)
    assert firing == {"ModelLatencyP99High", "ModelErrorRateHigh", "ModelDataCollectionDropping"}


def _drive(server: Any, models: Models, stop: threading.Event) -> None:
    fast = json.dumps({"inputs": [{"name": "input", "datatype": "FP32", "shape": [1, 4],
                                   "data": models.iris[0].tolist()}]}).encode()
    slow = json.dumps({"inputs": [{"name": "input", "datatype": "FP32", "shape": [1, 4],
                                   "data": [500.0, 1.0, 1.0, 1.0]}]}).encode()
    bad = json.dumps({"inputs": [{"name": "input", "datatype": "FP32", "shape": [1, 3],
                                  "data": [1.0, 2.0, 3.0]}]}).encode()
    i = 0
    while not stop.is_set():
        body = slow if i % 5 == 0 else bad if i % 5 == 1 else fast
        server.request("POST", "/v2/models/iris/infer", body)
        i += 1
    assert np.isfinite(i)


def _wait_firing(port: int, names: set[str], timeout: float) -> set[str]:
    deadline = time.monotonic() + timeout
    firing: set[str] = set()
    while time.monotonic() < deadline and firing != names:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/api/v1/alerts", timeout=5) as response:
            alerts = json.load(response)["data"]["alerts"]
        firing = {a["labels"]["alertname"] for a in alerts if a["state"] == "firing"}
        time.sleep(1)
    return firing
