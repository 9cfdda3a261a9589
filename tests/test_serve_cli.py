from __future__ import annotations

import json
from pathlib import Path

from click.testing import CliRunner

from mlops_iac.cli import main
from mlops_iac.serving.config import ServerConfig


def test_serve_settings_come_from_the_lock(converted: Path) -> None:
    result = CliRunner().invoke(main, ["serve", "--write-config", "server.json"])
    assert result.exit_code == 0, result.output
    config = ServerConfig.model_validate_json((converted / "server.json").read_text())
    (model,) = config.models
    lock_digest = json.loads(CliRunner().invoke(main, ["lock", "show", "--json"]).output)[
        "models"]["iris"]["versions"]["1"]["onnx"]["digest"]
    assert (model.name, model.version, model.digest) == ("iris", 1, lock_digest)
    assert (converted / model.path).exists() and model.path.startswith(".mlops/serve/")
    assert config.collection.enabled and config.collection.sample_rate == 1.0
    assert config.collection.sink == "file" and config.deployment == "iris-local"


def test_serve_adhoc_refs_and_errors(converted: Path) -> None:
    runner = CliRunner()
    adhoc = runner.invoke(main, ["serve", "iris@1", "--write-config", "adhoc.json"])
    assert adhoc.exit_code == 0, adhoc.output
    assert ServerConfig.model_validate_json((converted / "adhoc.json").read_text()).models[0].version == 1
    unknown = runner.invoke(main, ["serve", "--deployment", "nope"])
    assert unknown.exit_code == 1 and "unknown deployment(s) nope" in unknown.output
    (converted / "v2.joblib").write_bytes((converted / "model.joblib").read_bytes() + b"\0")
    runner.invoke(main, ["register", "iris", "--file", "v2.joblib"])
    missing = runner.invoke(main, ["serve", "iris@2", "--write-config", "x.json"])
    assert missing.exit_code == 1 and "run `mlops-iac convert iris@2` first" in missing.output
