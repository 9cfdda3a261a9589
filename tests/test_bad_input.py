"""Every command, given bad input, exits 1 (an error) or 2 (a usage error) with a message and
never a traceback. The list of commands comes from the CLI itself: a new command without a
case here fails `test_every_command_has_a_case`."""

from __future__ import annotations

from pathlib import Path

import click
import numpy as np
import pytest
from click.testing import CliRunner

from mlops_iac.cli import main

SPEC = """\
apiVersion: mlops-iac/v1
project: {name: bad-input}
models:
  - name: reg
    framework: sklearn
    source: model.joblib
    sample: sample.npy
    validate: {dataset: holdout.npz, metric: roc_auc, threshold: 0.5}
targets:
  local: {kind: local}
deployments:
  - {model: reg, version: 1, target: local}
"""

# (command path, arguments, what stderr must say). Each is a mistake a user can make.
CASES: list[tuple[str, list[str], str]] = [
    ("init", ["init", "."], "exists; pass --force"),
    ("init", ["init", "fresh", "--model", "My Model"], "DNS-1123 label"),
    ("validate", ["validate", "-f", "missing.yaml"], "file not found"),
    ("schema", ["schema", "--check"], "not found"),
    ("lock show", ["lock", "show", "-f", "broken/mlops.yaml"], "mlops.lock"),
    ("lock sync", ["lock", "sync", "-f", "missing.yaml"], "missing.yaml"),
    ("lock pending", ["lock", "pending", "--stage", "deploy"], "'deploy' is not one of"),
    ("synth", ["synth", "--target", "nope", "--dry-run"], "nope"),
    ("register", ["register", "reg", "--file", "missing.joblib"], "missing.joblib does not exist"),
    ("register", ["register", "reg", "--file", "model.joblib", "--framework", "onnx"], "is not an ONNX model"),
    (
        "register",
        ["register", "reg", "--file", "model.joblib", "--framework", "tensorflow"],
        "'tensorflow' is not one of",
    ),
    ("models list", ["models", "list", "nope"], "nope"),
    ("models show", ["models", "show", "reg@99"], "reg@99"),
    ("models show", ["models", "show", "reg@@"], "reg@@"),
    ("models tag", ["models", "tag", "reg@99", "a=b"], "reg@99"),
    ("models alias", ["models", "alias", "reg@99", "production"], "reg@99"),
    ("models unalias", ["models", "unalias", "reg", "nope"], "nope"),
    ("models pull", ["models", "pull", "reg@1", "--to", "out.bin", "--artifact", "onnx"], "onnx"),
    ("models delete", ["models", "delete", "reg@1"], "deployment"),
    ("models export", ["models", "export", "out.tar.gz", "nope"], "nope"),
    ("models import", ["models", "import", "sample.npy"], "sample.npy"),
    ("convert", ["convert", "reg@1", "--no-speed"], "roc_auc"),  # a classification metric on a regressor
    ("convert", ["convert", "reg@1", "--sample", "unreadable.npy"], "unreadable.npy"),
    ("convert", ["convert", "nope@1"], "nope"),
    ("profile", ["profile", "reg@1", "--quick"], "no ONNX artifact"),
    ("serve", ["serve", "reg@9"], "reg@9"),
    ("build", ["build", "reg@1"], "reg@1"),
    ("render", ["render", "--target", "local"], "local"),
    ("diff", ["diff", "--base", "no-such-commit"], "git"),
    ("monitor drift", ["monitor", "drift", "reg@1", "--collected", "missing.jsonl"], "missing.jsonl"),
    (
        "monitor drift",
        ["monitor", "drift", "plain@1", "--collected", "garbage.jsonl"],
        "garbage.jsonl:1: not a JSON object",
    ),
    ("convert", ["convert", "reg@1", "--sample", "holdout.npz", "--no-speed"], "roc_auc"),
    ("smoke", ["smoke", "reg@1", "--url", "http://127.0.0.1:9"], "reg@1"),
    ("smoke", ["smoke", "plain@1", "--url", "http://127.0.0.1:9", "--sample", "sample.npy"], "127.0.0.1:9"),
    ("rollout status", ["rollout", "status", "nope"], "nope"),
    ("rollout step", ["rollout", "step", "reg-local"], "rollout"),
    ("rollout abort", ["rollout", "abort", "nope"], "nope"),
    ("rollout list", ["rollout", "list", "--target", "nope"], "unknown target 'nope'"),
    ("shadow report", ["shadow", "report", "reg-local", "--collected", "sample.npy"], "mirrors to no shadow"),
    ("score", ["score", "reg@1", "--input", "missing.parquet", "--output", "scored"], "no ONNX artifact"),
    ("score", ["score", "plain@1", "--input", "missing.parquet", "--output", "scored"], "missing.parquet"),
    ("score", ["score", "plain@1", "--input", "garbage.jsonl", "--output", "scored"], "garbage.jsonl"),
]


def command_paths(group: click.Group = main, prefix: str = "") -> list[str]:
    paths = []
    ctx = click.Context(group)
    for name in group.list_commands(ctx):  # the lazily loaded commands too
        command = group.get_command(ctx, name)
        if isinstance(command, click.Group):
            paths += command_paths(command, f"{prefix}{name} ")
        else:
            paths.append(f"{prefix}{name}")
    return paths


def test_every_command_has_a_case() -> None:
    covered = {path for path, _, _ in CASES}
    assert set(command_paths()) - covered == set()


@pytest.fixture(scope="module")
def workdir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A project with a registered regressor whose spec asks for roc_auc, and broken files."""
    import joblib
    from sklearn.linear_model import LinearRegression

    folder = tmp_path_factory.mktemp("bad-input")
    rng = np.random.default_rng(0)
    x = rng.random((30, 3), dtype=np.float32)
    y = x @ np.array([1.0, 2.0, 3.0])
    joblib.dump(LinearRegression().fit(x, y), folder / "model.joblib")
    np.save(folder / "sample.npy", x)
    np.savez(folder / "holdout.npz", X=x, y=y)
    (folder / "unreadable.npy").write_bytes(b"\x93NUMPY garbage")
    (folder / "mlops.yaml").write_text(SPEC)
    (folder / "broken").mkdir()
    (folder / "broken" / "mlops.yaml").write_text(SPEC)
    (folder / "broken" / "mlops.lock").write_text("models: [unclosed\n")
    (folder / "garbage.jsonl").write_text('{"unclosed\nnot json\n')
    with pytest.MonkeyPatch.context() as patch:
        patch.chdir(folder)
        for args in (
            ["register", "reg", "--file", "model.joblib"],
            ["register", "plain", "--file", "model.joblib"],
            ["convert", "plain@1", "--sample", "sample.npy", "--no-speed"],
        ):  # plain: not in mlops.yaml
            result = CliRunner().invoke(main, args)
            assert result.exit_code == 0, result.output
    return folder


@pytest.mark.parametrize(("path", "args", "said"), CASES, ids=[" ".join(c[1][:3]) for c in CASES])
def test_bad_input_is_an_error_without_a_traceback(
    path: str, args: list[str], said: str, workdir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(workdir)
    result = CliRunner().invoke(main, args)
    # An exception the CLI did not turn into a message reaches the runner as itself.
    assert isinstance(result.exception, SystemExit), repr(result.exception)
    assert result.exit_code in (1, 2), (result.exit_code, result.output)
    assert "Traceback" not in result.stderr
    assert said in result.stderr, result.stderr
