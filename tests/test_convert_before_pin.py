"""A version converted before mlops.lock pins it keeps its conversion when it is pinned.

`convert` stores the ONNX model, its baseline and its validation in the registry; the lock only
records them for a pinned version. Pinning it later (`lock sync`, or registering the same bytes
again once a deployment names it) takes them from the registry, so `synth` and
`lock pending --stage convert` do not ask for a conversion that was already done.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from mlops_iac.cli import main
from mlops_iac.lock import read_lock
from mlops_iac.registry import LocalStore, Registry, parse_ref

SPEC = """\
apiVersion: mlops-iac/v1
project: {{name: before-pin}}
models:
  - name: m
    framework: sklearn
    source: model.joblib
    sample: sample.npy
    validate: {{dataset: holdout.npz, metric: accuracy, threshold: 0.5}}
targets:
  local: {{kind: local}}
deployments:
  - {{model: m, version: {version}, target: local}}
"""


def cli(*args: str) -> str:
    result = CliRunner().invoke(main, list(args))
    assert result.exit_code == 0, result.output
    return result.output


@pytest.fixture
def converted_before_pinning(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """m@1 deployed and pinned; m@2 registered and converted while no deployment names it."""
    import joblib
    from sklearn.linear_model import LogisticRegression

    rng = np.random.default_rng(3)
    x = rng.random((40, 4), dtype=np.float32)
    y = (x[:, 1] > 0.5).astype(np.int64)
    joblib.dump(LogisticRegression().fit(x, y), tmp_path / "first.joblib")
    joblib.dump(LogisticRegression(C=0.1).fit(x, y), tmp_path / "model.joblib")
    np.save(tmp_path / "sample.npy", x)
    np.savez(tmp_path / "holdout.npz", X=x, y=y)
    (tmp_path / "mlops.yaml").write_text(SPEC.format(version=1))
    monkeypatch.chdir(tmp_path)
    cli("register", "m", "--file", "first.joblib")
    cli("register", "m", "--file", "model.joblib")
    cli("convert", "m@2", "--no-speed")
    assert read_lock(tmp_path / "mlops.lock").version("m", 2) is None  # not pinned: nothing recorded
    (tmp_path / "mlops.yaml").write_text(SPEC.format(version=2))
    return tmp_path


def assert_conversion_kept(folder: Path) -> None:
    stored = Registry(LocalStore(folder / ".mlops" / "registry")).resolve(parse_ref("m@2"))
    pinned = read_lock(folder / "mlops.lock").version("m", 2)
    assert pinned is not None and pinned.onnx is not None and pinned.baseline is not None
    assert pinned.onnx.digest == stored.artifacts["onnx"].digest
    assert pinned.baseline.digest == stored.artifacts["baseline"].digest
    assert pinned.validation is not None and pinned.validation.passed
    assert cli("lock", "pending", "--stage", "convert") == ""
    assert "mlops-iac convert" not in cli("synth", "--dry-run")


def test_lock_sync_takes_the_stored_onnx(converted_before_pinning: Path) -> None:
    cli("lock", "sync")
    assert_conversion_kept(converted_before_pinning)


def test_registering_again_takes_the_stored_onnx(converted_before_pinning: Path) -> None:
    assert "already registered" in cli("register", "m", "--file", "model.joblib")
    assert_conversion_kept(converted_before_pinning)


def test_the_pinned_facts_are_what_convert_records(converted_before_pinning: Path) -> None:
    """Pinned first and converted after, or converted first and pinned after: the same lock."""
    folder = converted_before_pinning
    cli("lock", "sync")
    taken = (folder / "mlops.lock").read_text()
    cli("convert", "m@2", "--no-speed")  # now pinned: convert writes the lock's facts itself
    assert (folder / "mlops.lock").read_text() == taken
