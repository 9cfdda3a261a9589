from __future__ import annotations

import json
import os
import secrets
import shutil
from pathlib import Path

import pytest
from click.testing import CliRunner, Result

from mlops_iac.cli import main
from mlops_iac.lock import read_lock

from .conftest import QUICKSTART, OciRegistryServer


@pytest.fixture
def project(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    shutil.copyfile(QUICKSTART / "mlops.yaml", tmp_path / "mlops.yaml")
    (tmp_path / "model.joblib").write_bytes(b"model one")
    for name in ("sample.npy", "holdout.npz"):
        (tmp_path / name).write_bytes(b"x")
    monkeypatch.chdir(tmp_path)
    return tmp_path


def run(*args: str) -> Result:
    return CliRunner().invoke(main, list(args), catch_exceptions=False)


def test_register_prints_ref_and_pins_deployed_versions(project: Path) -> None:
    first = run("register", "iris", "--file", "model.joblib", "--tag", "team=ml", "--metric", "acc=0.9")
    assert first.exit_code == 0, first.output
    assert first.output.startswith("iris@1 sha256:")
    assert "pinned iris@1 in mlops.lock" in first.output  # the quickstart deploys version 1
    assert read_lock(project / "mlops.lock").version("iris", 1) is not None
    again = run("register", "iris", "--file", "model.joblib")
    assert again.exit_code == 0, again.output
    assert "iris@1" in again.output and "already registered" in again.output
    (project / "v2.joblib").write_bytes(b"model two")
    second = run("register", "iris", "--file", "v2.joblib")
    assert second.exit_code == 0, second.output
    assert second.output.startswith("iris@2") and "pinned" not in second.output
    assert read_lock(project / "mlops.lock").version("iris", 2) is None
    shown = json.loads(run("models", "show", "iris@1", "--json").output)
    assert shown["tags"] == {"team": "ml"} and shown["metrics"] == {"acc": 0.9}
    listed = json.loads(run("models", "list", "iris", "--json").output)
    assert [row["version"] for row in listed] == [1, 2]


def test_delete_is_refused_while_deployed(project: Path) -> None:
    assert run("register", "iris", "--file", "model.joblib").exit_code == 0
    refused = run("models", "delete", "iris@1")
    assert refused.exit_code == 1
    assert "deployment iris-local in mlops.yaml" in refused.output
    assert "the pin of iris@1 in mlops.lock" in refused.output
    assert run("models", "delete", "--force", "iris@1").exit_code == 2  # there is no --force
    (project / "v2.joblib").write_bytes(b"model two")
    assert run("register", "iris", "--file", "v2.joblib").exit_code == 0
    deleted = run("models", "delete", "iris@2")
    assert deleted.exit_code == 0 and "will not be reused" in deleted.output


def test_alias_then_lock_sync_moves_the_lock(project: Path) -> None:
    assert run("register", "iris", "--file", "model.joblib").exit_code == 0
    (project / "v2.joblib").write_bytes(b"model two")
    assert run("register", "iris", "--file", "v2.joblib").exit_code == 0
    assert "lock sync" in run("models", "alias", "iris@2", "production").output
    spec = project / "mlops.yaml"
    spec.write_text(spec.read_text().replace("    version: 1\n", "    alias: production\n"))
    stale = run("validate")
    assert stale.exit_code == 1 and "unknown alias 'production'" in stale.output
    synced = run("lock", "sync")
    assert synced.exit_code == 0, synced.output
    assert "iris-local: iris@production -> 2" in synced.output
    lock = read_lock(project / "mlops.lock")
    assert lock.models["iris"].aliases == {"production": 2}
    assert sorted(lock.models["iris"].versions) == [2]  # version 1 is no longer deployed
    assert run("validate").exit_code == 0
    assert "already up to date" in run("lock", "sync").output


def test_pull_export_import(project: Path, tmp_path: Path) -> None:
    assert run("register", "iris", "--file", "model.joblib").exit_code == 0
    assert run("models", "pull", "iris@1", "--to", "out.bin").exit_code == 0
    assert (project / "out.bin").read_bytes() == b"model one"
    assert run("models", "pull", "iris@1", "--to", "out.bin").exit_code == 2  # no silent overwrite
    assert run("models", "export", "iris.tar.gz").exit_code == 0
    other = tmp_path / "other"
    other.mkdir()
    os.chdir(other)
    imported = run("models", "import", str(project / "iris.tar.gz"))
    assert imported.exit_code == 0 and "imported iris" in imported.output
    assert "sha256:" in run("models", "show", "iris@1").output


@pytest.mark.parametrize("ref", ["../iris", "iris@..", "Iris@1", "iris@%2e%2e", "/iris"])
def test_bad_references_exit_1_without_traceback(project: Path, ref: str) -> None:
    result = CliRunner().invoke(main, ["models", "show", ref])
    assert result.exit_code == 1
    assert "invalid reference" in result.output and "Traceback" not in result.output


def test_symlink_out_of_the_project_is_refused(project: Path, tmp_path: Path) -> None:
    outside = tmp_path.parent / f"outside-{secrets.token_hex(3)}.joblib"
    outside.write_bytes(b"secret")
    os.symlink(outside, project / "link.joblib")
    result = CliRunner().invoke(main, ["register", "iris", "--file", "link.joblib"])
    assert result.exit_code == 1 and "symbolic link out of" in result.output
    missing = CliRunner().invoke(main, ["register", "iris", "--file", "nope.joblib"])
    assert missing.exit_code == 1 and "does not exist" in missing.output
    assert CliRunner().invoke(main, ["register", "Bad_Name", "--file", "model.joblib"]).exit_code == 1


def test_oci_backend_from_mlops_yaml_and_oras_pull(
    project: Path, oci_registry: OciRegistryServer, tmp_path: Path
) -> None:
    repository = f"{oci_registry.address}/cli{secrets.token_hex(3)}/models"
    spec = project / "mlops.yaml"
    spec.write_text(
        spec.read_text().replace(
            "  backend: local\n  path: .mlops/registry\n",
            f"  backend: oci\n  repository: {repository}\n  insecure: true\n",
        )
    )
    result = run("register", "iris", "--file", "model.joblib")
    assert result.exit_code == 0, result.output
    assert not (project / ".mlops").exists()
    import oras.provider

    client = oras.provider.Registry(oci_registry.address, insecure=True)
    pulled = client.pull(target=f"{repository}/iris:v1", outdir=str(tmp_path / "oras"))
    assert [Path(p).read_bytes() for p in pulled] == [b"model one"]
    assert Path(pulled[0]).name == "model.joblib"  # the title annotation names the file


def test_register_outside_a_project_is_refused_and_makes_no_registry(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    alone = tmp_path / "alone"
    alone.mkdir()
    (alone / "model.joblib").write_bytes(b"model one")
    monkeypatch.chdir(alone)
    refused = CliRunner().invoke(main, ["register", "iris", "--file", "model.joblib"])
    assert refused.exit_code == 1, refused.output
    assert f"mlops.yaml: not found in {alone}" in refused.output and "mlops-iac init" in refused.output
    assert "Traceback" not in refused.output and not (alone / ".mlops").exists()
    # Below a project: pointed at it, and nothing made where the user stands.
    shutil.copyfile(QUICKSTART / "mlops.yaml", tmp_path / "mlops.yaml")
    below = CliRunner().invoke(main, ["register", "iris", "--file", "model.joblib"])
    assert below.exit_code == 1 and f"found {tmp_path / 'mlops.yaml'}" in below.output
    assert f"--config {tmp_path / 'mlops.yaml'}" in below.output
    assert not (alone / ".mlops").exists() and not (tmp_path / ".mlops").exists()
