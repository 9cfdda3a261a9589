"""A file sink in a Kubernetes pod is lost with the pod: validation says so, where it is set."""

from __future__ import annotations

import shutil
from pathlib import Path

from click.testing import CliRunner

from mlops_iac.cli import main

from .conftest import ROOT

PROBLEM = "collects to a file in its pods on Kubernetes, which is lost with each pod"


def validate(folder: Path) -> str:
    result = CliRunner().invoke(main, ["validate", "-f", str(folder / "mlops.yaml")])
    assert result.exit_code == 0, result.output  # a warning, not an error
    return result.output


def test_a_file_sink_on_kubernetes_warns_at_the_sink(tmp_path: Path) -> None:
    shutil.copytree(ROOT / "examples/production", tmp_path, dirs_exist_ok=True)
    spec = (tmp_path / "mlops.yaml").read_text()
    line = spec.splitlines().index("      kind: file") + 1
    out = validate(tmp_path)
    # iris-prod (Kubernetes) warns, iris-edge (a Docker host, a named volume) does not.
    assert f"mlops.yaml:{line}:13: warning: monitoring.dataCollection.sink.kind: deployment iris-prod {PROBLEM}" in out
    assert "use sink: {kind: http, url: ...} on Kubernetes" in out
    assert "iris-edge collects" not in out
    (tmp_path / "mlops.yaml").write_text(
        spec.replace(
            "    auth: key\n",
            (
                "    auth: key\n    monitoring:\n      dataCollection:\n"
                '        sink: {kind: http, url: "http://collector.monitoring.svc/iris"}\n'
            ),
            1,
        )
    )
    assert PROBLEM not in validate(tmp_path)  # the deployment's own http sink wins
    (tmp_path / "mlops.yaml").write_text(
        spec.replace("    enabled: true\n    sampleRate: 0.05", "    enabled: false\n    sampleRate: 0.05")
    )
    assert PROBLEM not in validate(tmp_path)  # nothing collected, nothing lost


def test_a_drift_baseline_that_does_not_exist_is_located(tmp_path: Path) -> None:
    shutil.copytree(ROOT / "examples/production", tmp_path, dirs_exist_ok=True)
    spec = (tmp_path / "mlops.yaml").read_text()
    (tmp_path / "mlops.yaml").write_text(
        spec.replace(
            "    auth: key\n", ("    auth: key\n    monitoring:\n      drift: {baseline: reference.parquet}\n"), 1
        )
    )
    result = CliRunner().invoke(main, ["validate", "-f", str(tmp_path / "mlops.yaml")])
    assert result.exit_code == 1
    assert "deployments[0].monitoring.drift.baseline: reference.parquet does not exist" in result.output
