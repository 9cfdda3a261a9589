"""Files that are not what they claim to be, as users register and convert them.

Each row of `ROWS` is one wrong input: a non-model of each framework, a truncated model, a
wrong suffix, a folder where a file is expected and the reverse. The row's commands run as the
user runs them (the CLI, in a fresh project); the last one must fail with exit 1 and exactly
one line that names the file, never a traceback. ONNX is refused by `register` (reading it runs
no code); pickles and torch files register and are refused by `convert`, which loads them.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from mlops_iac.cli import main

SPEC = """\
apiVersion: mlops-iac/v1
project: {{name: wrong-inputs}}
{registry}models:
  - name: m
    framework: {framework}
    source: {file}
    sample: {sample}
targets:
  local: {{kind: local}}
"""
Content = Callable[[dict[str, bytes]], bytes]


def same(name: str) -> Content:
    return lambda made: made[name]


def truncated(name: str) -> Content:
    return lambda made: made[name][: len(made[name]) // 2]


def raw(data: bytes) -> Content:
    return lambda _: data


RANDOM = bytes(np.random.default_rng(30).integers(0, 256, 4096, dtype=np.uint8))
FOLDER = raw(b"")  # a marker: the row's file is made a folder


@dataclass(frozen=True)
class Row:
    id: str
    framework: str  # the model's framework in mlops.yaml
    file: str  # the file the user registers
    content: Content
    said: str  # what the one line must say besides the file's name
    flags: tuple[str, ...] = ()  # given to register
    fails_at: str = "convert"
    sample: str = "sample.npy"
    registry: str = ""
    names: str = ""  # the path the line must name, when it is not the model's file


ROWS = [
    # scikit-learn (and the boosters, through their scikit-learn API): loaded by convert only
    Row("sklearn-random-bytes", "sklearn", "model.joblib", raw(RANDOM), "is not a sklearn model"),
    Row("sklearn-text-file", "sklearn", "model.joblib", raw(b"weights: 1 2 3\n"), "not truncated, not another format"),
    Row("sklearn-empty-file", "sklearn", "model.joblib", raw(b""), "the file is empty"),
    Row("sklearn-truncated", "sklearn", "model.joblib", truncated("sklearn.joblib"), "is not a sklearn model"),
    Row("sklearn-not-an-estimator", "sklearn", "model.joblib", same("dict.joblib"), "holds a dict"),
    Row("sklearn-never-fitted", "sklearn", "model.joblib", same("unfitted.joblib"), "never fitted"),
    Row("xgboost-own-format", "xgboost", "model.json", same("xgboost.json"), "own save_model format"),
    Row("xgboost-truncated", "xgboost", "model.joblib", truncated("xgboost.joblib"), "is not a xgboost model"),
    Row("lightgbm-own-format", "lightgbm", "model.txt", same("lightgbm.txt"), "own save_model format"),
    Row("lightgbm-truncated", "lightgbm", "model.joblib", truncated("lightgbm.joblib"), "is not a lightgbm model"),
    Row("pytorch-random-bytes", "pytorch", "model.pt", raw(RANDOM), "is not a pytorch model"),
    Row("pytorch-state-dict", "pytorch", "model.pt", same("state.pt"), "not a torch module"),
    Row("pytorch-truncated", "pytorch", "model.pt", truncated("scripted.pt"), "is not a pytorch model"),
    # ONNX: checked by register, before anything is stored
    Row("onnx-random-under-sklearn", "sklearn", "bad.onnx", raw(RANDOM), "suffix says it is", fails_at="register"),
    Row(
        "onnx-flag-on-text",
        "sklearn",
        "notes.txt",
        raw(b"not a model\n"),
        "--framework says it is",
        flags=("--framework", "onnx"),
        fails_at="register",
    ),
    Row("onnx-truncated", "onnx", "model.onnx", truncated("model.onnx"), "is not", fails_at="register"),
    Row("onnx-empty-file", "onnx", "model.onnx", raw(b""), "is not a valid ONNX model", fails_at="register"),
    Row(
        "onnx-fails-on-sample",
        "sklearn",
        "model.onnx",
        same("model.onnx"),
        "running it on narrow.npy failed",
        flags=("--framework", "onnx"),
        fails_at="register",
        sample="narrow.npy",
    ),
    Row(
        "onnx-spec-on-pickle", "onnx", "model.joblib", same("sklearn.joblib"), "in mlops.yaml says", fails_at="register"
    ),
    # wrong suffixes
    Row("suffix-onnx-named-joblib", "sklearn", "model.joblib", same("model.onnx"), "it is an ONNX model"),
    Row("suffix-torch-named-joblib", "sklearn", "model.joblib", same("scripted.pt"), "--framework pytorch"),
    Row("suffix-onnx-given-pytorch", "pytorch", "model.pt", same("model.onnx"), "it is an ONNX model"),
    Row("suffix-pickle-named-onnx", "sklearn", "model.onnx", same("sklearn.joblib"), ".pt)", fails_at="register"),
    Row(
        "suffix-onnx-flag-sklearn",
        "sklearn",
        "model.onnx",
        same("model.onnx"),
        "--framework says sklearn",
        flags=("--framework", "sklearn"),
        fails_at="register",
    ),
    # folders and files
    Row("folder-as-model", "sklearn", "model.joblib", FOLDER, "is not a regular file", fails_at="register"),
    Row(
        "folder-as-sample",
        "sklearn",
        "model.joblib",
        same("sklearn.joblib"),
        "is a folder",
        sample="samples.npy",
        names="samples.npy",
    ),
    Row(
        "file-as-registry",
        "sklearn",
        "model.joblib",
        same("sklearn.joblib"),
        "registry.path names a file",
        fails_at="register",
        registry="registry: {backend: local, path: sample.npy}\n",
        names="sample.npy",
    ),
]


@pytest.fixture(scope="module")
def made(tmp_path_factory: pytest.TempPathFactory) -> dict[str, bytes]:
    """Real models of each framework, and things that are not, as their libraries save them."""
    import joblib
    import lightgbm
    import onnx
    import torch
    import xgboost
    from skl2onnx import to_onnx
    from sklearn.linear_model import LogisticRegression

    folder = tmp_path_factory.mktemp("made")
    rng = np.random.default_rng(0)
    x = rng.random((60, 4), dtype=np.float32)
    y = (x[:, 0] > 0.5).astype(np.int64)
    sk = LogisticRegression().fit(x, y)
    xgb = xgboost.XGBClassifier(n_estimators=3, max_depth=2).fit(x, y)
    lgb = lightgbm.LGBMClassifier(n_estimators=3, min_child_samples=5, verbose=-1).fit(x, y)
    saved = {
        "sklearn.joblib": lambda p: joblib.dump(sk, p),
        "dict.joblib": lambda p: joblib.dump({"weights": [1.0, 2.0]}, p),
        "unfitted.joblib": lambda p: joblib.dump(LogisticRegression(), p),
        "xgboost.joblib": lambda p: joblib.dump(xgb, p),
        "xgboost.json": lambda p: xgb.save_model(p),
        "lightgbm.joblib": lambda p: joblib.dump(lgb, p),
        "lightgbm.txt": lambda p: lgb.booster_.save_model(p),
        "scripted.pt": lambda p: torch.jit.save(torch.jit.script(torch.nn.Linear(4, 2)), p),
        "state.pt": lambda p: torch.save(torch.nn.Linear(4, 2).state_dict(), p),
        "model.onnx": lambda p: onnx.save(to_onnx(sk, x[:1], options={"zipmap": False}), p),
        "sample.npy": lambda p: np.save(p, x),
        "narrow.npy": lambda p: np.save(p, x[:, :3]),
    }
    out = {}
    for name, save in saved.items():
        save(str(folder / name))
        out[name] = (folder / name).read_bytes()
    return out


def project(folder: Path, row: Row, made: dict[str, bytes]) -> None:
    for name in ("sample.npy", "narrow.npy"):
        (folder / name).write_bytes(made[name])
    (folder / "samples.npy").mkdir()
    if row.content is FOLDER:
        (folder / row.file).mkdir()
    else:
        (folder / row.file).write_bytes(row.content(made))
    spec = SPEC.format(registry=row.registry, framework=row.framework, file=row.file, sample=row.sample)
    (folder / "mlops.yaml").write_text(spec)


@pytest.mark.parametrize("row", ROWS, ids=[r.id for r in ROWS])
def test_a_wrong_input_is_one_located_line(
    row: Row, made: dict[str, bytes], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    project(tmp_path, row, made)
    monkeypatch.chdir(tmp_path)
    register = ["register", "m", "--file", row.file, *row.flags]
    steps = [register] if row.fails_at == "register" else [register, ["convert", "m@1", "--no-speed"]]
    for args in steps[:-1]:
        done = CliRunner().invoke(main, args)
        assert done.exit_code == 0, done.output
    result = CliRunner().invoke(main, steps[-1])
    # An exception the CLI did not turn into a message reaches the runner as itself.
    assert isinstance(result.exception, SystemExit), repr(result.exception)
    assert result.exit_code == 1, result.output
    assert "Traceback" not in result.output
    lines = result.output.splitlines()
    assert len(lines) == 1, result.output
    assert (row.names or row.file) in lines[0] and row.said in lines[0], lines[0]
    if row.fails_at == "register":  # refused before anything was stored
        assert not (tmp_path / ".mlops" / "registry" / "index").exists() or not any(
            (tmp_path / ".mlops" / "registry" / "index").iterdir()
        )


def test_the_table_covers_every_framework_and_kind_of_mistake() -> None:
    frameworks = {r.framework for r in ROWS} | {r.flags[-1] for r in ROWS if r.flags}
    assert frameworks >= {"sklearn", "xgboost", "lightgbm", "pytorch", "onnx"}
    assert len(ROWS) >= 20
    kinds = {r.id.split("-")[0] for r in ROWS}
    assert kinds >= {"sklearn", "xgboost", "lightgbm", "pytorch", "onnx", "suffix", "folder", "file"}
