"""Progressive delivery: the policy, the pure decision, and real servers judged by their /metrics."""

from __future__ import annotations

import http.client
import json
import random
import shutil
import subprocess
import sys
import time
import urllib.parse
import urllib.request
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path
from typing import Any

import pytest
import yaml
from click.testing import CliRunner

from mlops_iac.cli import main
from mlops_iac.errors import ConfigError, MlopsIacError
from mlops_iac.lock import LockedVersion, RolloutFacts, read_lock, update_lock
from mlops_iac.plan import plan
from mlops_iac.resolve import load
from mlops_iac.rollout import Evidence, VersionEvidence, decide
from mlops_iac.rollout.evidence import counts, delta, prometheus_queries, quantile
from mlops_iac.serving.metrics import Metrics
from mlops_iac.spec.rollout import Rollout

from .conftest import ROOT, free_port, require, wait_http
from .server_fixtures import Models, Running, build_models, model_entry, running_server

DIGESTS = {1: "sha256:" + "a1" * 32, 2: "sha256:" + "b2" * 32}
POLICY = {
    "steps": [10, 50, 100],
    "bake": "2s",
    "gates": {
        "errorRate": {"max": 0.01, "relativeTo": "stable", "tolerance": 1.5},
        "p99LatencyMs": {"max": 1000},
        "minRequests": 30,
    },
}


def spec_text(rollout: dict[str, Any] | None = None, versions: list[int] | None = None) -> str:
    return yaml.safe_dump(
        {
            "apiVersion": "mlops-iac/v1",
            "project": {"name": "canary"},
            "models": [{"name": "iris", "framework": "sklearn", "source": "model.joblib"}],
            "targets": {"local": {"kind": "local", "port": 8080}},
            "deployments": [
                {
                    "name": "iris-live",
                    "model": "iris",
                    "versions": versions or [1, 2],
                    "target": "local",
                    **({"rollout": rollout} if rollout is not None else {}),
                }
            ],
        },
        sort_keys=False,
    )


def project(folder: Path, rollout: dict[str, Any] | None = None, versions: list[int] | None = None) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "model.joblib").write_bytes(b"x")
    file = folder / "mlops.yaml"
    file.write_text(spec_text(POLICY if rollout is None else rollout, versions))
    for n, digest in DIGESTS.items():
        update_lock(
            folder / "mlops.lock",
            lambda lock, n=n, d=digest: lock.with_version(  # type: ignore[misc]
                "iris", n, LockedVersion(digest=d, framework="sklearn", size=1)
            ),
        )
    return file


# --- the policy ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("rollout", "path", "allowed"),
    [
        ({"steps": [10, 5, 100]}, "deployments[0].rollout.steps", "strictly increasing"),
        ({"steps": [10, 50]}, "deployments[0].rollout.steps", "the last step to be 100"),
        ({"steps": [0, 100]}, "deployments[0].rollout.steps", "from 1 to 100"),
        ({"bake": "10 minutes"}, "deployments[0].rollout.bake", 'a duration like "10m"'),
        ({"gates": {"errorRate": {"max": 2}}}, "deployments[0].rollout.gates.errorRate.max", "1"),
        ({"onFailure": "panic"}, "deployments[0].rollout.onFailure", "rollback"),
        ({"steps": {"linear": {"step": 0}}}, "deployments[0].rollout.steps", "{linear: {step: N}}"),
        ({"steps": "fast"}, "deployments[0].rollout.steps", "[10, 50, 100]"),
    ],
)
def test_bad_policies_are_located(tmp_path: Path, rollout: dict[str, Any], path: str, allowed: str) -> None:
    file = project(tmp_path, rollout)
    with pytest.raises(ConfigError) as caught:
        load(file)
    problem = caught.value.first
    assert problem.path == path and allowed in str(problem), str(caught.value)
    assert len(caught.value.problems) == 1  # one sentence per mistake, not one per union branch
    assert problem.line > spec_text(rollout).splitlines().index("  rollout:")  # the policy's own line


def test_a_rollout_needs_a_stable_and_a_canary(tmp_path: Path) -> None:
    file = project(tmp_path, POLICY, versions=[1])
    (tmp_path / "mlops.yaml").write_text(file.read_text().replace("versions:\n    - 1", "version: 1"))
    with pytest.raises(ConfigError, match=r"deployments\[0\]\.rollout: a rollout needs two versions"):
        load(file)


def test_policy_weights_and_durations() -> None:
    assert Rollout.model_validate({"steps": {"linear": {"step": 30}}}).weights() == (30, 60, 90, 100)
    assert Rollout.model_validate({"bake": "1.5m"}).bake == 90
    assert Rollout.model_validate({"bake": "500ms"}).bake == 0.5
    assert Rollout.model_validate({}).weights() == (10, 50, 100)


def test_the_lock_weights_win_over_the_first_step(tmp_path: Path) -> None:
    file = project(tmp_path)
    weights = lambda: {v.number: v.weight for v in load(file).resolved.deployments[0].versions}  # noqa: E731
    assert weights() == {1: 90, 2: 10}  # not started: the canary gets its first step
    update_lock(
        tmp_path / "mlops.lock",
        lambda lock: lock.with_rollout("iris-live", RolloutFacts(stable=1, canary=2, weight=50, step=1, started=1.0)),
    )
    assert weights() == {1: 50, 2: 50}
    stack = json.loads(plan(load(file).resolved).files[0].content)  # what synth writes and serve runs
    assert [v["weight"] for v in stack["deployments"][0]["versions"]] == [50, 50]
    update_lock(
        tmp_path / "mlops.lock",
        lambda lock: lock.with_rollout(  # another canary: stale facts
            "iris-live", RolloutFacts(stable=1, canary=3, weight=100, started=1.0)
        ),
    )
    assert weights() == {1: 90, 2: 10}


# --- the decision ---------------------------------------------------------------------------


def evidence(
    canary: tuple[float, float, float | None],
    stable: tuple[float, float, float | None] = (1000, 0, 5.0),
    window: float = 120,
) -> Evidence:
    return Evidence(VersionEvidence(*canary), VersionEvidence(*stable), window, "test")


POLICY_MODEL = Rollout.model_validate({**POLICY, "bake": "2m", "gates": {**POLICY["gates"], "minRequests": 200}})


def test_good_canary_after_the_bake_advances_then_promotes() -> None:
    first = decide(POLICY_MODEL, 0, 120, evidence((300, 1, 8.0)))
    assert (first.action, first.weight, first.step) == ("advance", 50, 1)
    last = decide(POLICY_MODEL, 1, 125, evidence((900, 2, 8.0)))
    assert (last.action, last.weight, last.step) == ("promote", 100, 2)


def test_good_canary_still_baking_holds() -> None:
    d = decide(POLICY_MODEL, 0, 60, evidence((300, 0, 8.0)))
    assert (d.action, d.weight, d.step) == ("hold", 10, 0) and "baking: 60s of 120s" in d.reasons[0]


@pytest.mark.parametrize("requests", [0, 1, 199])
def test_too_little_traffic_holds_and_never_promotes(requests: int) -> None:
    d = decide(POLICY_MODEL, 1, 10_000, evidence((requests, 0, 2.0 if requests else None)))
    assert (d.action, d.weight) == ("hold", 50)
    assert "too little traffic" in d.reasons[0] and "at least 200" in d.reasons[0]


def test_too_little_traffic_holds_even_when_it_fails() -> None:
    assert decide(POLICY_MODEL, 0, 10_000, evidence((20, 20, 5.0))).action == "hold"


def test_failing_error_rate_rolls_back_before_the_bake_ends() -> None:
    d = decide(POLICY_MODEL, 0, 30, evidence((400, 40, 8.0)))
    assert (d.action, d.weight) == ("rollback", 0)
    assert d.reasons == ("error rate 10.00% is over 1.00%",)


def test_slow_canary_rolls_back() -> None:
    d = decide(POLICY_MODEL, 1, 130, evidence((400, 0, 1500.0)))
    assert (d.action, d.weight) == ("rollback", 0) and "p99 latency 1500.0 ms is over 1000 ms" in d.reasons


def test_errors_the_stable_shares_do_not_roll_back_a_good_canary() -> None:
    shared = decide(POLICY_MODEL, 0, 120, evidence((400, 8, 8.0), stable=(4000, 80, 8.0)))  # both fail 2%
    assert shared.action == "advance", shared.reasons
    worse = decide(POLICY_MODEL, 0, 120, evidence((400, 16, 8.0), stable=(4000, 80, 8.0)))  # 4% > 1.5 x 2%
    assert worse.action == "rollback" and "1.5 times" in worse.reasons[0]


def test_on_failure_hold_keeps_the_weight() -> None:
    policy = POLICY_MODEL.model_copy(update={"on_failure": "hold"})
    d = decide(policy, 1, 130, evidence((400, 40, 8.0)))
    assert (d.action, d.weight) == ("hold", 50) and "onFailure is hold" in d.reasons[-1]


# --- evidence from /metrics ------------------------------------------------------------------


def page() -> tuple[str, float]:
    """A /metrics page as the server writes it: its own Metrics, 90 answers and 10 failures of v2."""
    metrics = Metrics()
    metrics.requests.labels("iris", "2", "200")  # made at start, as the server does
    time.sleep(0.01)  # the 500 child is made later, at the first failure
    for i in range(100):
        metrics.requests.labels("iris", "2", "200" if i < 90 else "500").inc()
        metrics.latency.labels("iris", "2").observe(0.005 if i < 50 else 0.05)
    metrics.requests.labels("other", "2", "500").inc(7)
    made_500 = next(
        s.value
        for f in metrics.registry.collect()
        for s in f.samples
        if s.name == "mlops_requests_created" and s.labels["status"] == "500" and s.labels["model"] == "iris"
    )
    return metrics.render().decode(), made_500


def test_counts_deltas_and_quantiles_follow_prometheus() -> None:
    text, made_500 = page()
    (only,) = counts(text, "iris").items()
    version, c = only
    assert version == 2 and (c.requests, c.errors) == (100, 10)
    assert quantile(0.5, c.buckets) == pytest.approx(0.005)
    assert quantile(0.99, c.buckets) == pytest.approx(0.025 + 0.025 * 49 / 50)  # linear inside the bucket
    assert delta(c, c).requests == 0
    restarted = c.model_copy(update={"requests": 5.0, "errors": 0.0})
    assert delta(restarted, c).requests == 5  # a reset counter: all of now is new
    assert c.created is not None and c.created < made_500  # the oldest child: the server's start
    again = c.model_copy(update={"created": c.created + 1})  # restarted, and as many requests since
    assert delta(again, c).requests == 100
    q = prometheus_queries("iris", 'namespace="models"', 2.2)
    assert q["errors"] == (
        'sum by (version) (increase(mlops_requests_total{namespace="models",model="iris",status!="200"}[3s]))'
    )


# --- real servers, traffic at the lock's weights, `rollout step` reading their /metrics -------

BAD_HANDLER = """
import itertools

_calls = itertools.count()


def postprocess(outputs):
    # A broken release: every fifth request fails inside the server (answered 500).
    if next(_calls) % 5 == 4:
        raise RuntimeError("the new feature map is missing a column")
    return outputs
"""


@pytest.fixture(scope="module")
def models(tmp_path_factory: pytest.TempPathFactory) -> Models:
    built = build_models(tmp_path_factory.mktemp("models"))
    (built.folder / "bad_handler.py").write_text(BAD_HANDLER)
    return built


class Driver:
    """Clients sending real inference requests, split between the versions at the lock's weights."""

    def __init__(self, models: Models, servers: dict[int, Running], file: Path) -> None:
        import onnxruntime as ort

        row = models.iris[60:61]
        self.body = json.dumps(
            {"inputs": [{"name": "input", "datatype": "FP32", "shape": [1, 4], "data": row.ravel().tolist()}]}
        ).encode()
        session = ort.InferenceSession(str(models.folder / "iris.onnx"), providers=["CPUExecutionProvider"])
        self.label = session.run(None, {"input": row})[0].ravel().tolist()  # what every answer must say
        self.servers, self.file = servers, file
        self.sent = {v: 0 for v in servers}
        self.first_error: float | None = None
        self.rng = random.Random(21)

    def weights(self) -> dict[int, int]:
        dep = load(self.file).resolved.deployments[0]
        return {v.number: v.weight for v in dep.versions if v.number is not None}

    def drive(self, n: int) -> None:
        weights = self.weights()
        versions = [v for v in self.servers if weights.get(v, 0) > 0]
        # New connections per round: an idle keep-alive connection is closed by the server while baking.
        conns = {v: http.client.HTTPConnection("127.0.0.1", s.port, timeout=30) for v, s in self.servers.items()}
        for _ in range(n):
            version = self.rng.choices(versions, [weights[v] for v in versions])[0]
            conn = conns[version]
            conn.request("POST", "/v2/models/iris/infer", self.body, {"Content-Type": "application/json"})
            response = conn.getresponse()
            answer = response.read()
            self.sent[version] += 1
            if response.status == 200:
                assert json.loads(answer)["outputs"][0]["data"] == self.label
            elif self.first_error is None:
                assert response.status == 500, answer
                self.first_error = time.time()
        for conn in conns.values():
            conn.close()


def servers(stack: ExitStack, models: Models, canary_handler: str | None) -> dict[int, Running]:
    stable = model_entry(models, "iris", 1)
    canary = model_entry(models, "iris", 2, **({"handler": canary_handler} if canary_handler else {}))
    return {
        1: stack.enter_context(running_server(models, {"deployment": "iris-live", "models": [stable]})),
        2: stack.enter_context(running_server(models, {"deployment": "iris-live", "models": [canary]})),
    }


def step(file: Path, running: dict[int, Running]) -> dict[str, Any]:
    args = ["rollout", "step", "iris-live", "-f", str(file)]
    for s in running.values():
        args += ["--metrics-url", f"http://127.0.0.1:{s.port}/metrics"]
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 0, result.output
    record = read_lock(file.parent / "mlops.lock").rollouts["iris-live"].decision
    assert f"### Rollout of `iris-live`: **{record['action']}**" in result.output
    return record


def wait_bake(file: Path) -> None:
    facts = read_lock(file.parent / "mlops.lock").rollouts["iris-live"]
    time.sleep(max(0.0, facts.started + 2.05 - time.time()))


def until_settled(file: Path, running: dict[int, Running], driver: Driver, per_round: int) -> list[dict[str, Any]]:
    """Drive traffic and step until the rollout is promoted or rolled back (at most 8 rounds)."""
    records = [step(file, running)]
    assert records[0]["action"] == "start" and driver.weights() == {1: 90, 2: 10}
    for _ in range(8):
        driver.drive(per_round)
        record = step(file, running)
        records.append(record)
        if record["action"] in ("promote", "rollback"):
            return records
        if record["action"] == "hold":
            wait_bake(file)
    raise AssertionError([r["action"] for r in records])


def test_good_canary_is_promoted_through_every_step(tmp_path: Path, models: Models) -> None:
    file = project(tmp_path)
    with ExitStack() as stack:
        running = servers(stack, models, None)
        driver = Driver(models, running, file)
        records = until_settled(file, running, driver, per_round=400)
    moves = [(r["action"], r["weight"]) for r in records if r["action"] != "hold"]
    assert moves == [("start", 10), ("advance", 50), ("promote", 100)]
    assert driver.weights() == {1: 0, 2: 100}
    for r in records[1:]:  # every judgement saw the canary's own traffic and no errors
        assert r["evidence"]["canary"]["errors"] == 0 and r["evidence"]["canary"]["requests"] > 0
    promoted = records[-1]
    assert promoted["evidence"]["canary"]["requests"] >= 30 and promoted["evidence"]["windowS"] >= 2


def test_bad_canary_is_rolled_back_at_its_first_judgement(tmp_path: Path, models: Models) -> None:
    file = project(tmp_path)
    with ExitStack() as stack:
        running = servers(stack, models, "bad_handler.py")
        driver = Driver(models, running, file)
        records = until_settled(file, running, driver, per_round=400)
        rolled_back = time.time()
    started = read_lock(file.parent / "mlops.lock").rollouts["iris-live"]
    assert [r["action"] for r in records] == ["start", "rollback"]
    assert started.state == "rolled-back" and driver.weights() == {1: 100, 2: 0}
    canary = records[-1]["evidence"]["canary"]
    assert canary["requests"] == driver.sent[2]  # the server's counters saw every request sent to it
    assert canary["errors"] == pytest.approx(driver.sent[2] // 5, abs=1)
    assert driver.first_error is not None
    seconds = rolled_back - driver.first_error
    print(
        f"\nbad canary: first error to weight 0 in {seconds:.2f}s = {seconds / 2:.2f} bake windows "
        f"(bake 2s); it served {driver.sent[2]} requests ({canary['errors']:.0f} failed) before the rollback"
    )


def test_too_little_traffic_holds(tmp_path: Path, models: Models) -> None:
    file = project(tmp_path)
    with ExitStack() as stack:
        running = servers(stack, models, None)
        driver = Driver(models, running, file)
        assert step(file, running)["action"] == "start"
        for _ in range(2):
            driver.drive(40)  # about 4 canary requests a round: far below minRequests
            wait_bake(file)
            record = step(file, running)
            assert record["action"] == "hold" and "too little traffic" in record["reasons"][0]
            assert driver.weights() == {1: 90, 2: 10}
        before = (file.parent / "mlops.lock").read_bytes()
        args = ["rollout", "status", "iris-live", "-f", str(file), "--out", str(file.parent / "summary.md")]
        for s in running.values():
            args += ["--metrics-url", f"http://127.0.0.1:{s.port}/metrics"]
        status = CliRunner().invoke(main, args)
        assert status.exit_code == 0 and "**hold**" in status.output and "too little traffic" in status.output
        assert (file.parent / "mlops.lock").read_bytes() == before  # status judges and records nothing
        assert (file.parent / "summary.md").read_text() == status.output
    assert read_lock(file.parent / "mlops.lock").rollouts["iris-live"].state == "progressing"


def test_abort_sets_the_canary_to_zero(tmp_path: Path) -> None:
    file = project(tmp_path)
    result = CliRunner().invoke(main, ["rollout", "abort", "iris-live", "-f", str(file), "--reason", "pager"])
    assert result.exit_code == 0, result.output
    assert "**abort**" in result.output and "- pager" in result.output
    facts = read_lock(file.parent / "mlops.lock").rollouts["iris-live"]
    assert (facts.state, facts.weight) == ("aborted", 0)
    assert {v.number: v.weight for v in load(file).resolved.deployments[0].versions} == {1: 100, 2: 0}


# --- the same through a real Prometheus (how Kubernetes targets are judged) -----------------


def prometheus_scraping(stack: ExitStack, folder: Path, running: dict[int, Running]) -> str:
    binary = shutil.which("prometheus")
    if binary is None:
        require("prometheus (apt-get install prometheus)")
    assert binary is not None
    port = free_port()
    (folder / "prometheus.yml").write_text(
        yaml.safe_dump(
            {
                "global": {"scrape_interval": "500ms"},
                "scrape_configs": [
                    {"job_name": "mlops", "static_configs": [{"targets": [s.url for s in running.values()]}]}
                ],
            }
        )
    )
    log = stack.enter_context(open(folder / "prometheus.log", "wb"))  # noqa: SIM115 - closed by the stack
    process = subprocess.Popen(
        [
            binary,
            f"--config.file={folder / 'prometheus.yml'}",
            f"--storage.tsdb.path={folder / 'data'}",
            f"--web.listen-address=127.0.0.1:{port}",
        ],
        stdout=log,
        stderr=log,
    )
    stack.callback(process.wait, 30)
    stack.callback(process.terminate)
    wait_http(f"http://127.0.0.1:{port}/-/ready", timeout=60)
    url = f"http://127.0.0.1:{port}/api/v1/query?" + urllib.parse.urlencode({"query": "sum(up)"})
    for _ in range(600):  # ready is not scraped: the counters' values before any request must be seen
        with urllib.request.urlopen(url, timeout=5) as response:
            result = json.load(response)["data"]["result"]
        if result and float(result[0]["value"][1]) == len(running):
            return f"http://127.0.0.1:{port}"
        time.sleep(0.1)
    raise AssertionError("Prometheus never scraped the servers")


def scraped(prometheus: str, driver: Driver) -> None:
    """Wait until Prometheus has scraped every request sent (a condition, not a timer)."""
    url = f"{prometheus}/api/v1/query?" + urllib.parse.urlencode({"query": "sum(mlops_requests_total)"})
    for _ in range(600):
        with urllib.request.urlopen(url, timeout=5) as response:
            result = json.load(response)["data"]["result"]
        if result and float(result[0]["value"][1]) == sum(driver.sent.values()):
            return
        time.sleep(0.1)
    raise AssertionError("Prometheus never scraped the requests sent")


@pytest.mark.parametrize("bad", [False, True])
def test_rollout_judged_through_a_real_prometheus(tmp_path: Path, models: Models, bad: bool) -> None:
    file = project(tmp_path / "project", {**POLICY, "bake": "4s"})
    with ExitStack() as stack:
        running = servers(stack, models, "bad_handler.py" if bad else None)
        prometheus = prometheus_scraping(stack, tmp_path, running)
        driver = Driver(models, running, file)
        args = [
            "rollout",
            "step",
            "iris-live",
            "-f",
            str(file),
            "--prometheus",
            prometheus,
            "--selector",
            'job="mlops"',
        ]
        records: list[dict[str, Any]] = []
        for _ in range(10):
            result = CliRunner().invoke(main, args)
            assert result.exit_code == 0, result.output
            records.append(read_lock(file.parent / "mlops.lock").rollouts["iris-live"].decision)
            if records[-1]["action"] in ("promote", "rollback"):
                settled = time.time()
                break
            driver.drive(400)
            scraped(prometheus, driver)
            facts = read_lock(file.parent / "mlops.lock").rollouts["iris-live"]
            time.sleep(max(0.0, facts.started + 4.05 - time.time()))
    moves = [(r["action"], r["weight"]) for r in records if r["action"] != "hold"]
    assert moves == ([("start", 10), ("rollback", 0)] if bad else [("start", 10), ("advance", 50), ("promote", 100)])
    last = records[-1]
    assert 'increase(mlops_requests_total{job="mlops",model="iris"}' in last["evidence"]["queries"]["requests"]
    canary = last["evidence"]["canary"]
    assert canary["requests"] >= 30 and (canary["errors"] > 0) == bad
    assert canary["p99_ms"] is not None and canary["p99_ms"] > 0
    if bad:
        assert driver.first_error is not None
        seconds = settled - driver.first_error
        print(
            f"\nthrough Prometheus: first error to weight 0 in {seconds:.2f}s = {seconds / 4:.2f} bake windows "
            f"(bake 4s, scrape 0.5s); the canary served {driver.sent[2]} requests before the rollback"
        )


# --- the local target end to end: `serve`, a load driver, `rollout step` with its defaults ----


@contextmanager
def serving(folder: Path, port: int) -> Iterator[None]:
    """`mlops-iac serve` as a user runs it, with the weights mlops.lock holds now."""
    with open(folder / "serve.log", "ab") as log:
        process = subprocess.Popen(
            [sys.executable, "-m", "mlops_iac", "serve"], cwd=folder, stdout=log, stderr=subprocess.STDOUT
        )
    try:
        wait_http(f"http://127.0.0.1:{port}/v2/health/ready", timeout=60)
        yield
    finally:
        process.terminate()
        process.wait(30)


def drive_until(port: int, canary_answers: int, body: bytes) -> dict[str, int]:
    """Unversioned requests, split by the server itself, until the canary answered enough of them."""
    seen = {"1": 0, "2": 0}
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    while seen["2"] < canary_answers:
        conn.request("POST", "/v2/models/iris/infer", body, {"Content-Type": "application/json"})
        response = conn.getresponse()
        answer = json.loads(response.read())
        assert response.status == 200, answer
        seen[answer["model_version"]] += 1
    conn.close()
    return seen


def test_local_target_end_to_end(converted: Path) -> None:
    import joblib
    import numpy as np
    from sklearn.datasets import load_iris

    port = free_port()
    spec = yaml.safe_load((converted / "mlops.yaml").read_text())
    (dep,) = spec["deployments"]
    del dep["version"]
    spec["targets"]["local"]["port"] = port
    spec["deployments"] = [
        {
            **dep,
            "name": "iris-live",
            "versions": [1, 2],
            "rollout": {**POLICY, "gates": {**POLICY["gates"], "minRequests": 40}},
        }
    ]
    (converted / "mlops.yaml").write_text(yaml.safe_dump(spec, sort_keys=False))
    model = joblib.load(converted / "model.joblib").set_params(logisticregression__C=0.3)
    x, y = load_iris(return_X_y=True)
    joblib.dump(model.fit(x.astype(np.float32), y), converted / "model2.joblib")
    runner = CliRunner()
    for args in (["register", "iris", "--file", "model2.joblib"], ["convert", "iris@2", "--no-speed"]):
        result = runner.invoke(main, args)
        assert result.exit_code == 0, result.output
    body = json.dumps(
        {"inputs": [{"name": "input", "datatype": "FP32", "shape": [1, 4], "data": x[100].tolist()}]}
    ).encode()
    actions = []
    for _ in range(3):
        with serving(converted, port):
            started = runner.invoke(main, ["rollout", "step", "iris-live"]) if not actions else None
            if started is not None:
                assert started.exit_code == 0 and "**start**" in started.output, started.output
                actions.append("start")
            seen = drive_until(port, 40, body)
            weight = read_lock(converted / "mlops.lock").rollouts["iris-live"].weight
            assert seen["1"] > seen["2"] if weight == 10 else seen["1"] > 0  # the server split at the lock's weights
            wait_bake(converted / "mlops.yaml")
            result = runner.invoke(main, ["rollout", "step", "iris-live"])
            assert result.exit_code == 0, result.output
        actions.append(read_lock(converted / "mlops.lock").rollouts["iris-live"].decision["action"])
        if actions[-1] == "promote":
            break
    assert actions == ["start", "advance", "promote"]
    with serving(converted, port):
        seen = drive_until(port, 20, body)
    assert seen == {"1": 0, "2": 20}  # promoted: `serve` gives the canary every request
    synced = runner.invoke(main, ["lock", "sync"])
    assert synced.exit_code == 0, synced.output
    assert read_lock(converted / "mlops.lock").rollouts["iris-live"].state == "promoted"  # sync keeps the fact


# --- shadow traffic on Kubernetes: the HTTPRoute's RequestMirror -----------------------------

CANARY_LINES = "    versions: [1, 2]\n    traffic: {1: 90, 2: 10}     # canary: 10% to version 2\n"


def production(folder: Path, replacement: str) -> Path:
    shutil.copytree(ROOT / "examples" / "production", folder)
    text = (folder / "mlops.yaml").read_text()
    assert CANARY_LINES in text
    (folder / "mlops.yaml").write_text(text.replace(CANARY_LINES, replacement))
    return folder / "mlops.yaml"


def test_shadow_is_mirrored_by_the_route_and_serves_nothing(tmp_path: Path) -> None:
    from mlops_iac.manifests import version_name
    from mlops_iac.model_manifests import target_objects
    from mlops_iac.spec.targets import KubernetesTarget

    file = production(tmp_path / "p", "    version: 1\n    shadow: {2: 20}\n")
    result = plan(load(file).resolved, ("prod",))
    (stack,) = result.stacks
    assert isinstance(stack.target.spec, KubernetesTarget)
    dep = stack.deployments[0]
    assert dep.shadow == {2: 20} and [(v.number, v.weight) for v in dep.versions] == [(1, 100), (2, 0)]
    objects = target_objects(stack.project, stack.target.spec, stack.deployments)
    (route,) = [o for o in objects if o["kind"] == "HTTPRoute"]
    weighted = route["spec"]["rules"][-1]
    v1, v2 = (version_name("iris", v) for v in dep.versions)
    assert weighted["backendRefs"] == [{"name": v1, "port": 8080, "weight": 100}]  # answers come from v1 only
    assert weighted["filters"] == [
        {"type": "RequestMirror", "requestMirror": {"backendRef": {"name": v2, "port": 8080}, "percent": 20}}
    ]
    assert {o["metadata"]["name"] for o in objects if o["kind"] == "Deployment"} == {v1, v2}  # the shadow runs
    # plan.json carries it to the stack program, and reads back the same
    from mlops_iac.plan import StackPlan

    written = next(f for f in result.files if f.path == "prod/plan.json")
    assert StackPlan.model_validate_json(written.content).deployments[0].shadow == {2: 20}


@pytest.mark.parametrize(
    ("lines", "path", "message"),
    [
        ("    version: 1\n    shadow: {1: 20}\n", "deployments[0].shadow[1]", "version 1 is also in traffic"),
        ("    version: 1\n    shadow: {2: 0}\n", "deployments[0].shadow[2]", "expected a percent from 1 to 100"),
        ("    version: 1\n    shadow: {7: 20}\n", "deployments[0].shadow[7]", "iris@7 is not in mlops.lock"),
    ],
)
def test_bad_shadows_are_located(tmp_path: Path, lines: str, path: str, message: str) -> None:
    file = production(tmp_path / "p", lines)
    with pytest.raises(ConfigError) as caught:
        load(file)
    (problem,) = [p for p in caught.value.problems if p.severity == "error"]
    assert problem.path == path and message in str(problem) and problem.line > 0


def test_shadow_on_kubernetes_needs_a_gateway(tmp_path: Path) -> None:
    file = production(tmp_path / "p", "    version: 1\n    shadow: {2: 5}\n")
    text = file.read_text()
    gateway = "    gateway: {name: public, namespace: gateway}   # Gateway API: the HTTPRoute splits traffic\n"
    assert gateway in text
    file.write_text(text.replace(gateway, ""))
    with pytest.raises(ConfigError) as caught:
        load(file)
    (problem,) = [p for p in caught.value.problems if p.severity == "error"]
    assert problem.path == "deployments[0].shadow" and problem.line > 0
    assert "shadow traffic is mirrored by a Gateway API HTTPRoute" in str(problem)
    assert "expected a kubernetes target with `gateway:`, a docker target or a local target" in str(problem)


def test_a_route_over_the_gateway_apis_rule_limit_is_located(tmp_path: Path) -> None:
    """A rule per version and the weighted one: 15 versions and a shadow make 17 rules, which the
    API server refuses (HTTPRoute takes 16); 14 and a shadow make 16, which it takes."""
    many = list(range(1, 16))
    weights = ", ".join(f"{v}: {100 if v == 1 else 0}" for v in many)
    lines = f"    versions: {many}\n    traffic: {{{weights}}}\n    shadow: {{16: 5}}\n"
    with pytest.raises(ConfigError) as caught:
        load(production(tmp_path / "over", lines))
    (problem,) = [p for p in caught.value.problems if "HTTPRoute" in p.message]
    assert problem.path == "deployments[0].versions" and problem.line > 0
    assert "deployment iris-prod runs 16 versions: its HTTPRoute would have 17 rules" in problem.message
    assert "over the Gateway API's limit of 16" in problem.message
    fewer = lines.replace(", 15]", "]").replace(", 15: 0}", "}")
    with pytest.raises(ConfigError) as caught:  # versions missing from the lock, but no route problem
        load(production(tmp_path / "under", fewer))
    assert not [p for p in caught.value.problems if "HTTPRoute" in p.message]


EDGE_LINES = "    version: 1\n    target: edge\n"


def edge_with_shadow(tmp_path: Path, target_lines: str = "") -> Path:
    """examples/production with a shadow of version 2 on its Docker target's deployment."""
    file = production(tmp_path / "p", CANARY_LINES)
    text = file.read_text()
    assert EDGE_LINES in text and "    grpcPort: 9080" in text
    text = text.replace(EDGE_LINES, "    version: 1\n    shadow: {2: 20}\n    target: edge\n")
    file.write_text(text.replace("    grpcPort: 9080", target_lines or "    grpcPort: 9080"))
    return file


def test_a_docker_shadow_is_a_container_of_its_own_that_the_served_version_mirrors_to(tmp_path: Path) -> None:
    from mlops_iac.manifests import version_name

    from .test_stacks import run_program

    (stack,) = plan(load(edge_with_shadow(tmp_path)).resolved, ("edge",)).stacks
    dep = stack.deployments[0]
    assert dep.shadow == {2: 20} and [(v.number, v.weight) for v in dep.versions] == [(1, 100), (2, 0)]
    mocks, exported = run_program(stack)
    # its own host ports, beside version 1's, from the target's port + N - 1
    assert exported == {
        "iris-edge-v1": 8080,
        "iris-edge-v1-grpc": 9080,
        "iris-edge-v2": 8081,
        "iris-edge-v2-grpc": 9081,
    }
    (network,) = mocks.of("docker:index/network:Network")
    containers = {c.inputs["name"]: c.inputs for c in mocks.of("docker:index/container:Container")}
    v1, v2 = (version_name("iris", v) for v in dep.versions)
    settings = {n: json.loads(c["envs"][0].split("=", 1)[1]) for n, c in containers.items()}
    assert settings[v1]["mirrors"] == [{"model": "iris", "version": 2, "percent": 20, "url": f"http://{v2}:8080"}]
    assert "mirrors" not in settings[v2] and settings[v2]["models"][0]["version"] == 2  # a plain server
    for name, container in containers.items():  # on the deployment's network, by its own name
        assert container["networksAdvanced"] == [{"name": network.inputs["name"], "aliases": [name]}]
    # the same security settings, limits and healthcheck as the served version
    same = {"envs", "name", "image", "ports", "labels", "networksAdvanced", "volumes"}
    assert {k: v for k, v in containers[v1].items() if k not in same} == {
        k: v for k, v in containers[v2].items() if k not in same
    }
    assert containers[v2]["readOnly"] and containers[v2]["user"] == "10001:10001"
    assert containers[v2]["capabilities"] == {"drops": ["ALL"]}
    # without a shadow nothing changes: no network, no mirrors
    plain, _ = run_program(plan(load(production(tmp_path / "plain", CANARY_LINES)).resolved, ("edge",)).stacks[0])
    (container,) = plain.of("docker:index/container:Container")
    assert "networksAdvanced" not in container.inputs and not plain.of("docker:index/network:Network")
    assert "mirrors" not in container.inputs["envs"][0]


def test_a_docker_shadows_host_ports_are_checked_with_the_others(tmp_path: Path) -> None:
    from mlops_iac.errors import PlanError

    # version 1's gRPC on 8081 is where the shadow (version 2) would serve REST
    file = edge_with_shadow(tmp_path, "    grpcPort: 8081")
    with pytest.raises(PlanError, match=r"iris-edge v2 would listen on host port 8081, which iris-edge v1 \(gRPC\)"):
        plan(load(file).resolved, ("edge",))


# --- the command's answers to mistakes, and its defaults -----------------------------------


def test_rollout_command_errors_are_clear(tmp_path: Path) -> None:
    file = project(tmp_path)
    runner = CliRunner()
    unknown = runner.invoke(main, ["rollout", "step", "nope", "-f", str(file)])
    assert unknown.exit_code == 1 and "unknown deployment 'nope'; deployments: iris-live" in unknown.output
    not_started = runner.invoke(main, ["rollout", "status", "iris-live", "-f", str(file)])
    assert not_started.exit_code == 1 and "no rollout has started" in not_started.output
    dead = free_port()
    down = runner.invoke(
        main, ["rollout", "step", "iris-live", "-f", str(file), "--metrics-url", f"http://127.0.0.1:{dead}/metrics"]
    )
    assert down.exit_code == 1 and f"cannot read http://127.0.0.1:{dead}/metrics" in down.output
    assert "Traceback" not in down.output and "iris-live" not in read_lock(tmp_path / "mlops.lock").rollouts
    plain = tmp_path / "plain"
    plain_file = project(plain, POLICY)
    data = yaml.safe_load(plain_file.read_text())
    del data["deployments"][0]["rollout"]
    data["deployments"][0]["traffic"] = {1: 50, 2: 50}
    plain_file.write_text(yaml.safe_dump(data))
    no_policy = runner.invoke(main, ["rollout", "step", "iris-live", "-f", str(plain_file)])
    assert no_policy.exit_code == 1 and "iris-live has no rollout policy" in no_policy.output


def test_default_evidence_sources_follow_the_target(tmp_path: Path) -> None:
    from mlops_iac.cli_rollout import Source

    file = project(tmp_path)
    data = yaml.safe_load(file.read_text())
    data["targets"] = {
        "edge": {"kind": "docker", "host": "ssh://deploy@edge-01", "port": 9000},
        "prod": {"kind": "kubernetes", "namespace": "models"},
    }
    data["deployments"][0]["target"] = "edge"
    file.write_text(yaml.safe_dump(data))
    ws = load(file)
    source = Source(ws, ws.resolved.deployments[0], (), None, None)
    assert source.urls == ("http://edge-01:9000/metrics", "http://edge-01:9001/metrics")  # version N: port + N - 1
    data["deployments"][0]["target"] = "prod"
    file.write_text(yaml.safe_dump(data))
    ws = load(file)
    with pytest.raises(MlopsIacError, match="pass --prometheus URL"):
        Source(ws, ws.resolved.deployments[0], (), None, None)
    k8s = Source(ws, ws.resolved.deployments[0], (), "http://prometheus:9090", None)
    assert k8s.selector == 'namespace="models",service=~"iris-v[0-9]+-[0-9a-f]{8}"'  # what the ServiceMonitor gives


def test_rollout_list_says_what_is_due_and_when(tmp_path: Path) -> None:
    file = project(tmp_path)  # bake 2s: judged every second
    runner = CliRunner()
    listed = runner.invoke(main, ["rollout", "list", "-f", str(file)])
    assert listed.exit_code == 0 and listed.output == "iris-live\tnot-started\t10\t0\n"  # the weight synth applies
    update_lock(
        tmp_path / "mlops.lock",
        lambda lock: lock.with_rollout(
            "iris-live", RolloutFacts(stable=1, canary=2, weight=50, step=1, started=time.time() - 1.5)
        ),
    )
    name, state, weight, wait = runner.invoke(main, ["rollout", "list", "-f", str(file)]).output.split("\t")
    assert (name, state, weight) == ("iris-live", "progressing", "50") and 0 < float(wait) <= 0.6
    update_lock(
        tmp_path / "mlops.lock",
        lambda lock: lock.with_rollout(
            "iris-live", RolloutFacts(stable=1, canary=2, weight=0, state="rolled-back", started=1.0)
        ),
    )
    only = runner.invoke(main, ["rollout", "list", "-f", str(file), "--state", "progressing", "--target", "local"])
    assert only.exit_code == 0 and only.output == ""
    assert runner.invoke(main, ["rollout", "list", "-f", str(file), "--state", "rolled-back"]).output.startswith(
        "iris-live\trolled-back\t0\t"
    )


def test_rollout_step_with_no_server_names_the_step_the_url_and_what_to_do(tmp_path: Path) -> None:
    dead = free_port()
    file = project(tmp_path)
    file.write_text(file.read_text().replace("port: 8080", f"port: {dead}"))
    down = CliRunner().invoke(main, ["rollout", "step", "iris-live", "-f", str(file)])
    assert down.exit_code == 1 and "Traceback" not in down.output
    line = down.output.strip()
    assert "\n" not in line and line.startswith("error: rollout step iris-live: reading the evidence: ")
    assert f"cannot read http://127.0.0.1:{dead}/metrics: Connection refused" in line
    assert "is the server running? start it with `mlops-iac serve --deployment iris-live`" in line
    assert "urlopen error" not in line and "iris-live" not in read_lock(tmp_path / "mlops.lock").rollouts


@contextmanager
def idle_metrics() -> Iterator[str]:
    """A server's /metrics before any request: what the first step reads."""
    import http.server
    import threading

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            self.send_response(200)
            self.send_header("Content-Type", "text/plain; version=0.0.4")
            self.send_header("Content-Length", "0")
            self.end_headers()

        def log_message(self, *args: Any) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/metrics"
    finally:
        server.shutdown()
        server.server_close()


def test_the_first_step_says_what_the_canary_serves_and_no_empty_evidence(tmp_path: Path) -> None:
    file = project(tmp_path)
    with idle_metrics() as url:
        started = CliRunner().invoke(main, ["rollout", "step", "iris-live", "-f", str(file), "--metrics-url", url])
    assert started.exit_code == 0, started.output
    text = started.output
    # Before the start, synth and serve already gave the canary its first step: nothing moves.
    assert "Canary v2 against stable v1: **10%**, its first step" in text and "v1: 0% →" not in text
    assert "Evidence over 0s" not in text and "from -" not in text
    assert "| gate |" not in text and "No gates evaluated yet" in text
    assert read_lock(tmp_path / "mlops.lock").rollouts["iris-live"].decision["weightBefore"] == 10


def test_abort_of_a_promoted_rollout_is_refused_unless_asked_for(tmp_path: Path) -> None:
    file = project(tmp_path)
    update_lock(
        tmp_path / "mlops.lock",
        lambda lock: lock.with_rollout(
            "iris-live", RolloutFacts(stable=1, canary=2, weight=100, step=2, state="promoted", started=1.0)
        ),
    )
    before = (tmp_path / "mlops.lock").read_bytes()
    refused = CliRunner().invoke(main, ["rollout", "abort", "iris-live", "-f", str(file)])
    assert refused.exit_code == 1 and "Traceback" not in refused.output
    assert "iris-live: the rollout was promoted: v2 serves 100%" in refused.output
    assert "--revert-promoted" in refused.output
    assert (tmp_path / "mlops.lock").read_bytes() == before  # nothing moved
    reverted = CliRunner().invoke(main, ["rollout", "abort", "iris-live", "-f", str(file), "--revert-promoted"])
    assert reverted.exit_code == 0, reverted.output
    assert "100% → **0%**" in reverted.output
    facts = read_lock(tmp_path / "mlops.lock").rollouts["iris-live"]
    assert (facts.state, facts.weight) == ("aborted", 0)
