"""Shadow traffic on a local target, end to end as a user runs it: `mlops-iac serve` with a
deployment that mirrors 20% of its requests to version 2, a client, the collected records,
and `mlops-iac shadow report`. Answers are checked against in-process onnxruntime."""

from __future__ import annotations

import http.client
import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import yaml
from click.testing import CliRunner

from mlops_iac.cli import main
from mlops_iac.resolve import load

from .conftest import free_port
from .test_rollout import serving

REQUESTS = 2000


def shadow_project(converted: Path, port: int) -> None:
    import joblib
    from sklearn.datasets import load_iris

    spec = yaml.safe_load((converted / "mlops.yaml").read_text())
    spec["targets"]["local"]["port"] = port
    spec["deployments"] = [{**spec["deployments"][0], "name": "iris-live", "shadow": {2: 20}}]
    spec["monitoring"]["dataCollection"]["sampleRate"] = 0.0  # only the mirrored pairs are recorded
    (converted / "mlops.yaml").write_text(yaml.safe_dump(spec, sort_keys=False))
    x, y = load_iris(return_X_y=True)  # version 2: retrained with a stronger penalty
    model = joblib.load(converted / "model.joblib").set_params(logisticregression__C=0.1)
    joblib.dump(model.fit(x.astype(np.float32), y), converted / "model2.joblib")
    runner = CliRunner()
    for args in (["register", "iris", "--file", "model2.joblib"], ["convert", "iris@2", "--no-speed"]):
        result = runner.invoke(main, args)
        assert result.exit_code == 0, result.output


def sessions(converted: Path) -> dict[str, object]:
    import onnxruntime as ort

    from mlops_iac.lock import read_lock

    lock = read_lock(converted / "mlops.lock")
    found = {}
    for n in (1, 2):
        onnx = lock.models["iris"].versions[n].onnx
        assert onnx is not None
        path = next((converted / ".mlops/registry").rglob(onnx.digest.removeprefix("sha256:")))
        found[str(n)] = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return found


def test_the_server_mirrors_a_share_after_answering_and_the_report_pairs_every_one(converted: Path) -> None:
    from sklearn.datasets import load_iris

    port = free_port()
    shadow_project(converted, port)
    dep = load(converted / "mlops.yaml").resolved.deployments[0]
    assert dep.shadow == {2: 20} and [(v.number, v.weight) for v in dep.versions] == [(1, 100), (2, 0)]
    x = load_iris(return_X_y=True)[0].astype(np.float32)
    models = sessions(converted)
    expected = {v: [s.run(None, {"input": x[i : i + 1]}) for i in range(len(x))] for v, s in models.items()}
    with serving(converted, port):
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
        for n in range(REQUESTS):
            i = n % len(x)
            doc = {"inputs": [{"name": "input", "datatype": "FP32", "shape": [1, 4], "data": x[i].tolist()}]}
            if n % 2 == 0:
                doc["id"] = f"req-{n}"  # half name themselves; the server keys the others' records itself
            conn.request("POST", "/v2/models/iris/infer", json.dumps(doc), {"Content-Type": "application/json"})
            response = conn.getresponse()
            answer = json.loads(response.read())
            assert response.status == 200 and answer["model_version"] == "1", answer  # never the shadow's
            outputs = {o["name"]: o["data"] for o in answer["outputs"]}
            assert outputs["label"] == expected["1"][i][0].ravel().tolist()
            assert answer.get("id") == doc.get("id")
        conn.request("GET", "/metrics")
        metrics = conn.getresponse().read().decode()
        conn.close()
    files = list(converted.rglob("requests.jsonl*"))
    records = [json.loads(line) for f in files for line in f.read_text().splitlines()]
    shadow = [r for r in records if r.get("shadow")]
    primary = [r for r in records if r.get("mirrored")]
    assert abs(len(shadow) / REQUESTS - 0.20) <= 0.20 * 0.05, len(shadow)  # the configured share, within 5%
    assert len(primary) == len(shadow) and {r["id"] for r in primary} == {r["id"] for r in shadow}
    assert {r["version"] for r in shadow} == {"2"} and {r["version"] for r in primary} == {"1"}
    assert 'mlops_shadow_mirrored_total{model="iris",version="2"}' in metrics
    for r in shadow:  # the shadow's recorded answers are version 2's, on the very request mirrored
        feeds = next(p for p in primary if p["id"] == r["id"])["inputs"]["input"]
        answer = models["2"].run(None, {"input": np.asarray(feeds, np.float32)})  # type: ignore[attr-defined]
        assert r["outputs"]["label"] == answer[0].ravel().tolist()

    out = converted / "shadow-report"
    result = CliRunner().invoke(
        main, ["shadow", "report", "iris-live", "--collected", str(files[0].parent), "--out", str(out)]
    )
    assert result.exit_code == 0, result.output
    assert (
        f"{len(shadow)} mirrored requests paired by request id (0 failed in the shadow); unpaired: 0 primary, "
        "0 shadow" in result.output
    )
    paired = [(next(p for p in primary if p["id"] == r["id"])["outputs"], r["outputs"]) for r in shadow]
    agree = np.mean([a["label"] == b["label"] for a, b in paired])
    assert f"| label | label | {agree:.2%} |" in result.output, result.output
    diffs = np.concatenate([np.abs(np.subtract(a["probabilities"], b["probabilities"])).ravel() for a, b in paired])
    assert diffs.max() > 0  # a retrained model: the probabilities move
    assert f"| {diffs.mean():.4g} | {diffs.max():.4g} |" in result.output, result.output
    assert "| primary |" in result.output and "| shadow |" in result.output
    assert (out / "shadow-v2.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert (out / "report.md").read_text() == result.output


@pytest.mark.parametrize(
    ("lines", "said"),
    [
        ('{"model": "iris"\n', "requests.jsonl:1: not a JSON record"),
        ('{"model": "iris", "id": "a", "version": "1", "mirrored": true, "outputs": {}}\n', "no mirrored request"),
    ],
)
def test_shadow_report_errors_are_located(tmp_path: Path, lines: str, said: str) -> None:
    from .test_rollout import project

    file = project(tmp_path, {}, versions=[1])
    data = yaml.safe_load(file.read_text())
    del data["deployments"][0]["rollout"]
    data["deployments"][0] = {**data["deployments"][0], "shadow": {2: 10}}
    file.write_text(yaml.safe_dump(data))
    (tmp_path / "requests.jsonl").write_text(lines)
    result = CliRunner().invoke(
        main,
        [
            "shadow",
            "report",
            "iris-live",
            "-f",
            str(file),
            "--collected",
            str(tmp_path / "requests.jsonl"),
            "--out",
            str(tmp_path / "r"),
        ],
    )
    assert result.exit_code == 1 and said in result.output and "Traceback" not in result.output


# --- a shadow served by another server (as on a Docker host): mirrored over HTTP ----------------

DATA = {
    "BOOL": [True, False],
    "UINT8": [0, 255],
    "UINT16": [0, 65535],
    "UINT32": [0, 2**32 - 1],
    "UINT64": [2**64 - 1, 2**63],
    "INT8": [-128, 127],
    "INT16": [-(2**15), 2**15 - 1],
    "INT32": [-(2**31), 2**31 - 1],
    "INT64": [-(2**63), 2**63 - 1],
    "FP16": [0.5, -65504.0],
    "FP32": [1.5, -0.0025],  # as the server writes float32: its shortest repr
    "FP64": [0.1, -1e300],
    "BYTES": ["héllo wörld", "紫"],
}


def mirrored_records(folder: Path, name: str) -> tuple[dict[str, Any], dict[str, Any]]:
    records = [json.loads(line) for line in (folder / "collected" / name).read_text().splitlines()]
    return (
        {r["id"]: r for r in records if r.get("mirrored")},
        {r["id"]: r for r in records if r.get("shadow")},
    )


def sample(text: str, name: str, **labels: str) -> float:
    """The value of one series in a Prometheus exposition (0 where it is absent)."""
    from prometheus_client.parser import text_string_to_metric_families

    return sum(
        s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
        if s.name == name and all(s.labels.get(k) == v for k, v in labels.items())
    )


def scraped(server: Any, key: str) -> str:
    status, _, body = server.request("GET", "/metrics", headers={"Authorization": f"Bearer {key}"})
    assert status == 200
    return str(body.decode())


def test_a_shadow_served_elsewhere_gets_its_share_of_every_datatype_exactly(tmp_path: Path) -> None:
    """Two real servers: the primary's settings name the shadow's URL (`mirrors`), as a Docker
    target's served container names the shadow's container. Every v2 datatype arrives as the
    client sent it (the shadow, an identity model, answers what it got), under the key."""
    import time

    from mlops_iac.serving.runtime import sha256_of

    from .server_fixtures import Models, identity_model, running_server

    path = identity_model(tmp_path)
    models = Models(tmp_path, np.zeros(0), np.zeros(0))
    env = {"MLOPS_IAC_API_KEY": "k3y"}

    def entry(version: int) -> dict[str, Any]:
        return {"name": "id", "version": version, "path": path.name, "digest": sha256_of(path)}

    collection = {"enabled": True, "sample_rate": 0.0, "sink": "file", "path": "collected/mirrored.jsonl"}
    inputs = [{"name": f"x_{t}", "datatype": t, "shape": [2], "data": d} for t, d in DATA.items()]
    with running_server(models, {"deployment": "s", "auth": True, "models": [entry(2)]}, env) as shadow:
        mirror = {"model": "id", "version": 2, "percent": 30, "url": f"http://127.0.0.1:{shadow.port}"}
        config = {"deployment": "p", "auth": True, "models": [entry(1)], "collection": collection, "mirrors": [mirror]}
        with running_server(models, config, env) as primary:
            for n in range(100):
                status, answer = primary.json(
                    "POST", "/v2/models/id/infer", {"id": f"r{n}", "inputs": inputs}, Authorization="Bearer k3y"
                )
                assert status == 200 and answer["model_version"] == "1"
                assert {o["name"]: o["data"] for o in answer["outputs"]} == {f"y_{t}": d for t, d in DATA.items()}
            for _ in range(200):  # the mirror's bursts follow the answers
                if sample(scraped(primary, "k3y"), "mlops_shadow_mirrored_total", version="2") >= 30:
                    break
                time.sleep(0.05)
            assert sample(scraped(primary, "k3y"), "mlops_shadow_mirrored_total", model="id", version="2") == 30
            assert sample(scraped(primary, "k3y"), "mlops_shadow_dropped_total") == 0
            # exactly 30 of the 100 reached the shadow: a running total, not a random draw
            assert sample(scraped(shadow, "k3y"), "mlops_requests_total", version="2", status="200") == 30
    primaries, shadows = mirrored_records(tmp_path, "mirrored.jsonl")
    assert len(shadows) == 30 and set(primaries) == set(shadows)
    for rid, record in shadows.items():
        assert record["version"] == "2" and "error" not in record
        assert record["outputs"] == primaries[rid]["outputs"] == {f"y_{t}": d for t, d in DATA.items()}


def test_a_shadow_that_cannot_be_reached_is_recorded_as_failed_and_never_seen(tmp_path: Path) -> None:
    import time

    from .server_fixtures import build_models, model_entry, running_server

    models = build_models(tmp_path)
    nobody = free_port()
    collection = {"enabled": True, "sample_rate": 0.0, "sink": "file", "path": "collected/down.jsonl"}
    mirror = {"model": "iris", "version": 2, "percent": 50, "url": f"http://127.0.0.1:{nobody}"}
    config = {"models": [model_entry(models, "iris")], "collection": collection, "mirrors": [mirror]}
    with running_server(models, config) as primary:
        body = {"inputs": [{"name": "input", "datatype": "FP32", "shape": [1, 4], "data": models.iris[0].tolist()}]}
        for _ in range(10):
            status, answer = primary.json("POST", "/v2/models/iris/infer", body)
            assert status == 200 and answer["model_version"] == "1"
        for _ in range(200):
            if (tmp_path / "collected/down.jsonl").exists() and len(mirrored_records(tmp_path, "down.jsonl")[1]) == 5:
                break
            time.sleep(0.05)
        metrics = scraped(primary, "")
    primaries, shadows = mirrored_records(tmp_path, "down.jsonl")
    assert len(shadows) == 5 and set(primaries) == set(shadows)  # paired, by the ids the server made
    assert all(r["error"] == "the shadow version failed on this request" for r in shadows.values())
    assert sample(metrics, "mlops_shadow_mirrored_total") == 0  # counts those the shadow answered


class _SlowShadow:
    """Stands in for a shadow server that is slow or hung (a loopback HTTP server): it counts the
    requests it reads and answers each after `delay` seconds (never, with None)."""

    def __init__(self, delay: float | None) -> None:
        import http.server
        import threading
        import time

        self.requests: list[str] = []
        owner = self

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_POST(self) -> None:
                self.rfile.read(int(self.headers["content-length"]))
                owner.requests.append(self.path)
                if delay is None:
                    time.sleep(30)
                    return
                time.sleep(delay)
                body = b'{"model_version":"2","outputs":[]}'
                self.send_response(200)
                self.send_header("content-length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args: Any) -> None:
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"


def _request() -> Any:
    from mlops_iac.serving.protocol import parse

    body = {"id": "r1", "inputs": [{"name": "input", "datatype": "FP32", "shape": [1, 4], "data": [1, 2, 3, 4]}]}
    return parse(json.dumps(body).encode(), None)


def test_a_mirror_that_timed_out_is_not_sent_again(monkeypatch: pytest.MonkeyPatch) -> None:
    """A shadow slower than the timeout may still run the request: sending it again would run it
    twice (two shadow records under one id) and double the load on a shadow already slow."""
    import time

    from mlops_iac.serving import shadow as shadows
    from mlops_iac.serving.config import MirrorConfig

    monkeypatch.setattr(shadows, "TIMEOUT", 0.3)
    slow = _SlowShadow(delay=1.0)
    remote = shadows.Remote(MirrorConfig(model="iris", version=2, percent=100, url=slow.url), None)
    with pytest.raises(TimeoutError):
        remote.answer(_request(), "r1")
    time.sleep(0.5)  # a second try would have been read by now
    assert slow.requests == ["/v2/models/iris/versions/2/infer"]
    slow.server.shutdown()


def test_closing_drops_the_queued_mirrors_instead_of_running_them(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """At shutdown a hung shadow holds the server's drain for the mirror in flight only: what is
    queued is dropped and counted, never sent, so SIGTERM's drain ends and the collector (closed
    next) keeps the primary's records."""
    import time
    import types

    from prometheus_client import CollectorRegistry

    from mlops_iac.serving import shadow as shadows
    from mlops_iac.serving.collect import Collector
    from mlops_iac.serving.config import CollectionConfig, MirrorConfig

    monkeypatch.setattr(shadows, "TIMEOUT", 0.3)
    monkeypatch.setattr(shadows, "PAUSE", 0.0)
    hung = _SlowShadow(delay=None)
    remote = shadows.Remote(MirrorConfig(model="iris", version=2, percent=100, url=hung.url), None)
    config = CollectionConfig(enabled=True, sample_rate=0.0, sink="file", path="collected/c.jsonl")
    collector = Collector(config, tmp_path, lambda reason: None)
    registry = CollectorRegistry()
    mirror = shadows.Shadow({"iris": [(remote, 100)]}, collector, registry)
    primary = types.SimpleNamespace(runtime=types.SimpleNamespace(name="iris", version="1"))
    payload = b'{"outputs":[{"name":"label","data":[0]}]}'
    mirror.after(primary, _request(), payload, time.perf_counter())
    while not hung.requests:  # the first mirror is in flight
        time.sleep(0.01)
    for _ in range(5):
        mirror.after(primary, _request(), payload, time.perf_counter())
    mirror.close()
    collector.close()
    assert not mirror.thread.is_alive()
    assert hung.requests == ["/v2/models/iris/versions/2/infer"]  # the queued five were never sent
    assert registry.get_sample_value("mlops_shadow_dropped_total") == 5
    hung.server.shutdown()


@pytest.mark.parametrize("where", ["local", "remote"])
def test_a_sampled_request_that_is_mirrored_is_recorded_once_for_the_primary(tmp_path: Path, where: str) -> None:
    """Collection samples every request and 30% are mirrored: each request id has one record of
    the primary (the mirrored ones marked so), not a sampled one and a mirrored one, so drift
    counts it once; on a shadow loaded by the server and on one served by another server."""
    import time
    from collections import Counter
    from contextlib import ExitStack

    from .server_fixtures import build_models, model_entry, running_server

    models = build_models(tmp_path)
    collection = {"enabled": True, "sample_rate": 1.0, "sink": "file", "path": "collected/both.jsonl"}
    with ExitStack() as stack:
        config: dict[str, Any] = {"models": [model_entry(models, "iris")], "collection": collection}
        if where == "local":
            config["models"].append(model_entry(models, "iris", 2, shadow=30))
        else:
            shadow = stack.enter_context(running_server(models, {"models": [model_entry(models, "iris", 2)]}))
            config["mirrors"] = [{"model": "iris", "version": 2, "percent": 30, "url": f"http://{shadow.url}"}]
        primary = stack.enter_context(running_server(models, config))
        for n in range(100):
            row = models.iris[n % len(models.iris)].tolist()
            body = {"id": f"r{n}", "inputs": [{"name": "input", "datatype": "FP32", "shape": [1, 4], "data": row}]}
            status, answer = primary.json("POST", "/v2/models/iris/infer", body)
            assert status == 200 and answer["model_version"] == "1"
        file = tmp_path / "collected/both.jsonl"
        for _ in range(200):  # the writer and the mirror's bursts follow the answers
            if file.exists() and sum('"shadow":true' in line for line in file.read_text().splitlines()) == 30:
                break
            time.sleep(0.05)
    records = [json.loads(line) for line in file.read_text().splitlines()]
    primaries = Counter(r["id"] for r in records if not r.get("shadow"))
    assert primaries == Counter({f"r{n}": 1 for n in range(100)})
    assert {r["version"] for r in records if not r.get("shadow")} == {"1"}
    mirrored = {r["id"] for r in records if r.get("mirrored")}
    shadows = {r["id"] for r in records if r.get("shadow")}
    assert len(mirrored) == 30 and mirrored == shadows
