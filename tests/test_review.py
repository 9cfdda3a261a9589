"""`mlops-iac diff`: the review of a deployment change between two commits."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest
import yaml
from click.testing import CliRunner

from mlops_iac.cli import main
from mlops_iac.review import LIMIT, MARKER

from .conftest import ROOT

CANARY = "    versions: [1, 2]\n    traffic: {1: 90, 2: 10}     # canary: 10% to version 2\n"


def git(folder: Path, *args: str) -> str:
    env = {
        "GIT_AUTHOR_NAME": "t",
        "GIT_AUTHOR_EMAIL": "t@example.com",
        "GIT_COMMITTER_NAME": "t",
        "GIT_COMMITTER_EMAIL": "t@example.com",
        "PATH": "/usr/bin:/bin",
    }
    return subprocess.run(["git", *args], cwd=folder, check=True, capture_output=True, text=True, env=env).stdout


@pytest.fixture
def repo(tmp_path: Path) -> Path:
    shutil.copytree(ROOT / "examples/production", tmp_path / "deploy")
    git(tmp_path, "init", "-q", "-b", "main")
    return tmp_path / "deploy"


def commit(repo: Path, text: str | None = None, message: str = "change") -> None:
    if text is not None:
        (repo / "mlops.yaml").write_text(text)
    git(repo.parent, "add", "-A")
    git(repo.parent, "commit", "-q", "-m", message)


def diff(repo: Path, *args: str) -> str:
    result = CliRunner().invoke(main, ["diff", "-f", str(repo / "mlops.yaml"), *args])
    assert result.exit_code == 0, result.output
    return result.stdout


def test_a_canary_shows_versions_traffic_and_resources(repo: Path) -> None:
    original = (repo / "mlops.yaml").read_text()
    commit(repo, original.replace(CANARY, "    version: 1\n"), "v1 only")
    commit(repo, original, "canary")
    text = diff(repo, "--base", "HEAD~1", "--head", "HEAD")
    assert text.startswith(MARKER) and "1 deployment change(s)" in text
    assert "| `iris-prod` | changed |" in text and "iris-edge" not in text  # edge did not change
    assert "v1 `8f03a2cb4a4d` 100%" in text and "v2 `8e247c07abec` 10%" in text
    assert "100% → **90%**" in text and "| v2 (new) | 10% |" in text
    assert "**create** (8): `ConfigMap/iris-v2-8e247c07-" in text  # its settings, named by their digest
    assert "`ServiceMonitor/iris-v2-8e247c07`" in text
    assert "**keep** (12):" in text and "`HTTPRoute/iris-prod`" in text and "**delete**" not in text
    assert "req/s per replica" in text  # the profile's figures


def test_no_change_says_so(repo: Path) -> None:
    commit(repo, message="as is")
    assert "no deployment changes" in diff(repo, "--base", "HEAD", "--head", "HEAD")
    assert "no deployment changes" in diff(repo, "--base", "HEAD")  # against the working tree


def test_a_removed_deployment_and_a_first_commit(repo: Path) -> None:
    text = (repo / "mlops.yaml").read_text()
    commit(repo, message="start")
    edge = text[text.index("  - name: iris-edge") : text.index("\nmonitoring:") + 1]
    commit(repo, text.replace(edge, ""), "drop the edge device")
    out = diff(repo, "--base", "HEAD~1", "--head", "HEAD")
    assert "| `iris-edge` | removed |" in out and "**delete** (1): `Container/iris-v1-8f03a2cb`" in out
    (repo.parent / "new").mkdir()
    shutil.copy(repo / "mlops.yaml", repo.parent / "new/mlops.yaml")
    shutil.copy(repo / "mlops.lock", repo.parent / "new/mlops.lock")
    first = CliRunner().invoke(main, ["diff", "-f", str(repo.parent / "new/mlops.yaml"), "--base", "HEAD"])
    assert first.exit_code == 0 and "| `iris-prod` | added |" in first.stdout


def test_a_breaking_signature_is_flagged(repo: Path) -> None:
    commit(repo, message="start")
    lock = yaml.safe_load((repo / "mlops.lock").read_text())
    lock["models"]["iris"]["versions"][2]["onnx"]["inputs"][0]["shape"] = [-1, 5]
    (repo / "mlops.lock").write_text(yaml.safe_dump(lock))
    commit(repo, message="v2 takes 5 features")
    out = diff(repo, "--base", "HEAD~1", "--head", "HEAD")
    assert "**Breaking change**" in out and "v2: input 'input' changed shape [-1, 4] -> [-1, 5]" in out


def test_hundreds_of_models_stay_within_one_comment(repo: Path) -> None:
    spec = yaml.safe_load((repo / "mlops.yaml").read_text())
    lock = yaml.safe_load((repo / "mlops.lock").read_text())
    template = lock["models"]["iris"]
    spec["models"] = [dict(spec["models"][0], name=f"m{i}") for i in range(300)]
    spec["deployments"] = [
        {"name": f"m{i}-prod", "model": f"m{i}", "version": 1, "target": "prod", "auth": "none"} for i in range(300)
    ]
    lock["models"] = {f"m{i}": template for i in range(300)}
    (repo / "mlops.lock").write_text(yaml.safe_dump(lock))
    commit(repo, yaml.safe_dump(spec), "three hundred models")
    for d in spec["deployments"]:
        d.pop("version")
        d["versions"], d["traffic"] = [1, 2], {1: 50, 2: 50}
    commit(repo, yaml.safe_dump(spec), "every model gets a canary")
    out = diff(repo, "--base", "HEAD~1", "--head", "HEAD")
    assert "300 deployment change(s)" in out
    assert len(out) < LIMIT and "left out" in out


def test_a_resource_change_shows_before_and_after(repo: Path) -> None:
    commit(repo, message="start")
    text = (repo / "mlops.yaml").read_text()
    bigger = text.replace("      cpu: 500m\n      memory: 256Mi", "      cpu: '1'\n      memory: 512Mi")
    commit(repo, bigger, "bigger edge")
    out = diff(repo, "--base", "HEAD~1", "--head", "HEAD")
    assert "| `iris-edge` | changed |" in out and "iris-prod" not in out
    assert "500m/1000m cpu, 256Mi memory" in out and "→ **1000m/2000m cpu, 512Mi memory" in out
    assert "**keep** (1): `Container/iris-v1-8f03a2cb`" in out


def _columns(*named: tuple[str, str]) -> list[dict[str, object]]:
    return [{"name": n, "datatype": d, "shape": [-1, 1]} for n, d in named]


def test_a_column_change_is_flagged_by_name(repo: Path) -> None:
    """A DataFrame pipeline takes one input per column: the review names the columns and their
    types, and a removed, renamed or retyped column is a breaking change."""
    lock = yaml.safe_load((repo / "mlops.lock").read_text())
    versions = lock["models"]["iris"]["versions"]
    before = _columns(("island", "BYTES"), ("bill_length_mm", "FP32"), ("sex", "BYTES"), ("year", "INT64"))
    versions[1]["onnx"]["inputs"] = versions[2]["onnx"]["inputs"] = before
    (repo / "mlops.lock").write_text(yaml.safe_dump(lock))
    commit(repo, message="start")
    versions[2]["onnx"]["inputs"] = _columns(
        ("island", "BYTES"), ("bill_length_mm", "FP32"), ("gender", "BYTES"), ("year", "FP32")
    )
    (repo / "mlops.lock").write_text(yaml.safe_dump(lock))
    commit(repo, message="v2 renames sex and makes year a float")
    out = diff(repo, "--base", "HEAD~1", "--head", "HEAD")
    assert "**Breaking change**" in out
    assert "v2: column 'sex' (BYTES) was removed" in out and "v2: column 'gender' (BYTES) is new and required" in out
    assert "v2: column 'year' changed datatype INT64 -> FP32" in out
    assert "v1: " not in out.split("**Breaking change**")[1].split("| version |")[0]  # v1 did not change
    assert "- v2 takes 4 columns: `island` BYTES, `bill_length_mm` FP32, `gender` BYTES, `year` FP32" in out


def test_a_docker_shadow_lists_its_container_and_network(repo: Path) -> None:
    """A shadow on a Docker target runs as a container of its own on a network of the
    deployment's: the review lists both to create, and says what the shadow does."""
    commit(repo, message="edge serves v1")
    edge = "    version: 1\n    target: edge\n"
    text = (repo / "mlops.yaml").read_text()
    assert edge in text
    commit(repo, text.replace(edge, "    version: 1\n    shadow: {2: 20}\n    target: edge\n"), "shadow v2")
    review = diff(repo, "--base", "HEAD~1", "--head", "HEAD")
    assert "- **create** (2): `Container/iris-v2-8e247c07`, `Network/iris-edge-mirror`\n" in review
    assert "- **keep** (1): `Container/iris-v1-8f03a2cb`\n" in review
    assert (
        "- v2 is a shadow: `Container/iris-v2-8e247c07` gets 20% of the requests, mirrored by the served "
        "versions' containers over `Network/iris-edge-mirror`; its answers are never returned\n"
    ) in review
    assert "weights are not honoured" not in review  # one version answers: the shadow takes no traffic


def test_an_unpinned_version_fails_diff_as_it_fails_validate(repo: Path) -> None:
    original = (repo / "mlops.yaml").read_text()
    commit(repo, original, "as is")
    (repo / "mlops.yaml").write_text(original.replace(CANARY, "    versions: [1, 7]\n    traffic: {1: 90, 7: 10}\n"))
    validated = CliRunner().invoke(main, ["validate", "-f", str(repo / "mlops.yaml")])
    reviewed = CliRunner().invoke(main, ["diff", "-f", str(repo / "mlops.yaml")])
    assert validated.exit_code == 1 and reviewed.exit_code == 1, reviewed.output
    refusal = next(line for line in validated.stderr.splitlines() if "iris@7 is not in mlops.lock" in line)
    assert refusal in reviewed.stderr.splitlines() and "Traceback" not in reviewed.output
    assert "(not pinned)" in reviewed.stdout  # the review still shows what the change asks for
    commit(repo, message="unpinned")
    at_commit = CliRunner().invoke(main, ["diff", "-f", str(repo / "mlops.yaml"), "--base", "HEAD~1", "--head", "HEAD"])
    assert at_commit.exit_code == 1 and "iris@7 is not in mlops.lock" in at_commit.output
