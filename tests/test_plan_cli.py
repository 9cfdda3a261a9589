from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner

from mlops_iac.cli import main
from mlops_iac.errors import MlopsIacError, PlanError
from mlops_iac.lock import LockedVersion, update_lock
from mlops_iac.plan import plan
from mlops_iac.resolve import load
from mlops_iac.schema import SCHEMA_FILE, json_schema_text

from .conftest import QUICKSTART, ROOT, require_module

DIGEST = "sha256:" + "cd" * 32


@pytest.fixture
def quickstart(tmp_path: Path) -> Path:
    shutil.copyfile(QUICKSTART / "mlops.yaml", tmp_path / "mlops.yaml")
    for name in ("model.joblib", "sample.npy", "holdout.npz"):
        (tmp_path / name).write_bytes(b"x")
    return tmp_path / "mlops.yaml"


def pin(file: Path, number: int = 1) -> None:
    update_lock(
        file.parent / "mlops.lock",
        lambda lock: lock.with_version("iris", number, LockedVersion(digest=DIGEST, framework="sklearn", size=1)),
    )


def test_plan_needs_pinned_versions(quickstart: Path) -> None:
    with pytest.raises(PlanError, match="iris-local: iris@1"):
        plan(load(quickstart).resolved)


def test_plan_is_deterministic_and_resolved(quickstart: Path) -> None:
    pin(quickstart)
    first = plan(load(quickstart).resolved)
    second = plan(load(quickstart).resolved)
    assert first == second
    (artifact,) = first.files
    assert artifact.path == "local/plan.json"
    data = json.loads(artifact.content)
    (dep,) = data["deployments"]
    assert dep["name"] == "iris-local"
    assert dep["versions"][0] == {**dep["versions"][0], "number": 1, "digest": DIGEST, "weight": 100}
    hardware = dep["versions"][0]["hardware"]
    assert hardware["sources"]["cpu"] == "default" and hardware["cpu_millis"] == 1000
    assert dep["monitoring"]["alert_p99_ms"] == 50  # from the model's profile SLO
    assert dep["monitoring"]["sink"]["kind"] == "file"
    assert str(quickstart.parent) not in artifact.content  # no machine-specific paths


def test_profile_recommendation_fills_auto(quickstart: Path) -> None:
    pin(quickstart)
    rec = {
        "cpu_millis": 250,
        "memory_bytes": 200 * 2**20,
        "threads": 1,
        "max_batch_size": 8,
        "max_delay_ms": 2.0,
        "replicas_min": 1,
        "replicas_max": 3,
    }
    update_lock(quickstart.parent / "mlops.lock", lambda lock: lock.with_facts("iris", 1, recommendation=rec))
    hw = load(quickstart).resolved.deployments[0].versions[0].hardware
    assert (hw.cpu_millis, hw.memory_bytes, hw.replicas_max, hw.max_batch_size) == (250, 200 * 2**20, 3, 8)
    assert hw.sources["cpu"] == "profile"
    text = quickstart.read_text().replace("cpu: auto", "cpu: 100m")
    quickstart.write_text(text)
    warnings = load(quickstart).warnings
    assert [(w.path, w.message) for w in warnings] == [
        ("deployments[0].hardware.cpu", "100m is below the profile's 250m")
    ]


def test_unknown_version_against_lock(quickstart: Path) -> None:
    pin(quickstart, 2)
    result = CliRunner().invoke(main, ["validate", "-f", str(quickstart)])
    assert result.exit_code == 1
    assert "deployments[0].version: iris@1 is not in mlops.lock" in result.output
    assert "expected a version in the lock: 2" in result.output


def test_validate_exit_codes(quickstart: Path, tmp_path: Path) -> None:
    runner = CliRunner()
    ok = runner.invoke(main, ["validate", "-f", str(quickstart)])
    assert ok.exit_code == 0 and "valid (1 model(s)" in ok.output
    bad = tmp_path / "bad.yaml"
    bad.write_text("apiVersion: mlops-iac/v1\nproject: {name: x}\n")
    invalid = runner.invoke(main, ["validate", "-f", str(bad)])
    assert invalid.exit_code == 1
    assert "Traceback" not in invalid.output
    assert f"{bad}:1:1: models: missing required field" in invalid.output
    usage = runner.invoke(main, ["validate", "--no-such-flag"])
    assert usage.exit_code == 2
    as_json = runner.invoke(main, ["validate", "-f", str(bad), "--json"])
    assert as_json.exit_code == 1 and json.loads(as_json.output)[0]["path"] == "models"


def test_init_writes_a_valid_starter(tmp_path: Path) -> None:
    runner = CliRunner()
    folder = tmp_path / "My Project"
    assert runner.invoke(main, ["init", str(folder), "--model", "churn"]).exit_code == 0
    text = (folder / "mlops.yaml").read_text()
    assert text.startswith("# yaml-language-server: $schema=")
    assert "name: my-project" in text and "- name: churn" in text
    result = runner.invoke(main, ["validate", "-f", str(folder / "mlops.yaml")])
    assert result.exit_code == 0, result.output
    assert "will be written by the model's `train` command" in result.output
    again = runner.invoke(main, ["init", str(folder)])
    assert again.exit_code == 2 and "--force" in again.output


def test_synth_writes_plans_and_dry_run_diffs(quickstart: Path) -> None:
    pin(quickstart)
    runner = CliRunner()
    out = quickstart.parent / "out"
    first = runner.invoke(main, ["synth", "-f", str(quickstart), "--out", str(out)])
    assert first.exit_code == 0, first.output
    assert (out / "local" / "plan.json").exists()
    same = runner.invoke(main, ["synth", "-f", str(quickstart), "--out", str(out)])
    assert same.exit_code == 0 and "up to date" in same.output, same.output
    quickstart.write_text(quickstart.read_text().replace("cpu: auto", "cpu: 2"))
    dry = runner.invoke(main, ["synth", "-f", str(quickstart), "--out", str(out), "--dry-run"])
    assert dry.exit_code == 0 and "would modify" in dry.output, dry.output
    assert '"cpu_millis": 2000' in dry.output and '"cpu": "explicit"' in dry.output
    assert '"cpu_millis": 1000' in (out / "local" / "plan.json").read_text()
    unknown = runner.invoke(main, ["synth", "-f", str(quickstart), "--target", "nope"])
    assert unknown.exit_code == 1 and "unknown target(s): nope" in unknown.output


def test_lock_show(quickstart: Path) -> None:
    runner = CliRunner()
    empty = runner.invoke(main, ["lock", "show", "-f", str(quickstart)])
    assert empty.exit_code == 0 and "no model versions locked yet" in empty.output, empty.output
    pin(quickstart)
    shown = runner.invoke(main, ["lock", "show", "-f", str(quickstart)])
    assert shown.exit_code == 0 and "iris" in shown.output and DIGEST[:19] in shown.output, shown.output
    as_json = json.loads(runner.invoke(main, ["lock", "show", "-f", str(quickstart), "--json"]).output)
    assert as_json["models"]["iris"]["versions"]["1"]["digest"] == DIGEST


def test_missing_file_is_a_clear_error(tmp_path: Path) -> None:
    result = CliRunner().invoke(main, ["validate", "-f", str(tmp_path / "nope.yaml")])
    assert result.exit_code == 1 and "file not found" in result.output


def test_schema_is_fresh() -> None:
    assert (ROOT / SCHEMA_FILE).read_text() == json_schema_text(), (
        f"{SCHEMA_FILE} is stale: run `mlops-iac schema > {SCHEMA_FILE}`"
    )


def test_openapi_document_is_fresh() -> None:
    from mlops_iac.schema import OPENAPI_FILE, openapi_text

    assert (ROOT / OPENAPI_FILE).read_text() == openapi_text(), (
        f"{OPENAPI_FILE} is stale: run `mlops-iac schema --openapi > {OPENAPI_FILE}`"
    )


def test_schema_accepts_the_quickstart() -> None:
    jsonschema = require_module("jsonschema")
    import yaml

    jsonschema.validate(yaml.safe_load((QUICKSTART / "mlops.yaml").read_text()), json.loads(json_schema_text()))


def test_python_dash_m_entry_point() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "mlops_iac", "--version"], capture_output=True, text=True, check=True
    )
    assert "mlops-iac, version" in result.stdout


def test_debug_shows_traceback(tmp_path: Path) -> None:
    result = CliRunner().invoke(main, ["--debug", "validate", "-f", str(tmp_path / "x.yaml")])
    assert result.exit_code == 1 and isinstance(result.exception, MlopsIacError)  # raised, not printed
    assert str(tmp_path / "x.yaml") in str(result.exception) and "Traceback" not in result.output


@pytest.mark.parametrize("example", sorted(p.parent.name for p in (ROOT / "examples").glob("*/mlops.yaml")))
def test_every_example_validates(example: str) -> None:
    result = CliRunner().invoke(main, ["validate", "-f", str(ROOT / "examples" / example / "mlops.yaml")])
    assert result.exit_code == 0, result.output
    assert "valid (" in result.stdout
