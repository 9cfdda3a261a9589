"""Conversion to ONNX on real models trained on data that scikit-learn ships."""

from __future__ import annotations

import csv
from pathlib import Path
from typing import Any

import joblib
import numpy as np
import onnx
import pytest
from click.testing import CliRunner
from sklearn.datasets import load_breast_cancer, load_diabetes

from mlops_iac.cli import main
from mlops_iac.convert import Options, Validation, convert_artifact
from mlops_iac.convert import frameworks as fw
from mlops_iac.convert.data import DataError, read_features, read_labelled
from mlops_iac.convert.frameworks import ConversionError, check_external_data
from mlops_iac.lock import read_lock
from mlops_iac.signatures import breaking_changes

from .conftest import require_module


@pytest.fixture(scope="module")
def cancer() -> tuple[np.ndarray, np.ndarray]:
    features, labels = load_breast_cancer(return_X_y=True)
    return features.astype(np.float32), labels


def _sklearn_models() -> dict[str, Any]:
    from lightgbm import LGBMClassifier
    from sklearn.ensemble import HistGradientBoostingClassifier, RandomForestClassifier
    from sklearn.linear_model import LogisticRegression
    from sklearn.neural_network import MLPClassifier
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler
    from xgboost import XGBClassifier

    return {
        "logistic-regression": LogisticRegression(max_iter=5000),
        "random-forest": RandomForestClassifier(n_estimators=30, max_depth=6, random_state=0),
        "hist-gradient-boosting": HistGradientBoostingClassifier(max_iter=30, random_state=0),
        "pipeline-scaler": make_pipeline(StandardScaler(), LogisticRegression(max_iter=1000)),
        "mlp": make_pipeline(StandardScaler(), MLPClassifier((16,), max_iter=500, random_state=0)),
        "lightgbm": LGBMClassifier(n_estimators=30, verbose=-1, random_state=0),
        "xgboost": XGBClassifier(n_estimators=30, random_state=0),
    }


@pytest.mark.parametrize("name", list(_sklearn_models()))
def test_sklearn_family_converts_with_parity(name: str, cancer: tuple[np.ndarray, np.ndarray], tmp_path: Path) -> None:
    features, labels = cancer
    model = _sklearn_models()[name].fit(features[:400], labels[:400])
    path = tmp_path / "model.joblib"
    joblib.dump(model, path)
    framework = name if name in ("lightgbm", "xgboost") else "sklearn"
    report = convert_artifact(
        framework,
        path,
        features[400:500],
        Options(measure_speed=False),
        validation=Validation(features[500:], labels[500:], "roc_auc", 0.8),
    )
    assert report.parity.passed, report.parity.describe()
    assert [o.name for o in report.parity.outputs] == ["label", "probabilities"]
    assert report.parity.outputs[0].mismatches == 0
    assert report.signature["inputs"] == [{"name": "input", "datatype": "FP32", "shape": [-1, 30]}]
    assert report.validation is not None and report.validation["passed"]
    onnx.checker.check_model(onnx.load_from_string(report.model))


def test_regressor_converts(tmp_path: Path) -> None:
    from sklearn.ensemble import GradientBoostingRegressor

    features, target = load_diabetes(return_X_y=True)
    features = features.astype(np.float32)
    path = tmp_path / "reg.joblib"
    joblib.dump(GradientBoostingRegressor(n_estimators=30, random_state=0).fit(features, target), path)
    report = convert_artifact(
        "sklearn",
        path,
        features[:80],
        Options(atol=1e-3, rtol=1e-4),
        validation=Validation(features, target, "rmse", 80.0),
    )
    assert report.parity.passed, report.parity.describe()
    assert report.validation is not None and report.validation["passed"]
    assert set(report.speedup) == {"threads", "batch1", "batch1000"}
    assert report.speedup["batch1"]["nativeMs"] > 0 and report.speedup["batch1"]["onnxMs"] > 0


def _standardized(features: np.ndarray) -> np.ndarray:
    return ((features - features.mean(0)) / (features.std(0) + 1e-6)).astype(np.float32)


def _torch_mlp(features: np.ndarray, labels: np.ndarray) -> Any:
    torch = require_module("torch")
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(30, 16), torch.nn.ReLU(), torch.nn.Linear(16, 2))
    optimizer = torch.optim.Adam(model.parameters(), lr=0.01)
    x, y = torch.tensor(features), torch.tensor(labels)
    for _ in range(100):
        optimizer.zero_grad()
        torch.nn.functional.cross_entropy(model(x), y).backward()
        optimizer.step()
    return model.eval()


@pytest.mark.parametrize("saved_as", ["torchscript", "module"])
def test_pytorch_mlp_converts_with_parity(cancer: tuple[np.ndarray, np.ndarray], tmp_path: Path, saved_as: str) -> None:
    torch = require_module("torch")
    features, labels = _standardized(cancer[0]), cancer[1]
    model = _torch_mlp(features[:400], labels[:400])
    path = tmp_path / "mlp.pt"
    if saved_as == "torchscript":
        torch.jit.save(torch.jit.script(model), str(path))
    else:
        torch.save(model, str(path))
    report = convert_artifact("pytorch", path, features[400:480], Options(measure_speed=False))
    assert report.parity.passed, report.parity.describe()
    assert report.signature["inputs"][0]["shape"] == [-1, 30]
    with torch.no_grad():
        logits = model(torch.tensor(features[500:])).numpy()
    from mlops_iac.convert.onnx_tools import run, session

    (onnx_logits,) = run(session(report.model), features[500:])
    assert np.argmax(onnx_logits, 1).tolist() == np.argmax(logits, 1).tolist()
    assert (np.argmax(logits, 1) == labels[500:]).mean() > 0.9  # a real, trained model


def test_a_tampered_graph_fails_parity(
    cancer: tuple[np.ndarray, np.ndarray], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from sklearn.linear_model import LogisticRegression

    features, labels = cancer
    path = tmp_path / "lr.joblib"
    joblib.dump(LogisticRegression(max_iter=5000).fit(features, labels), path)
    real = fw.convert

    def tampered(*args: Any) -> fw.Converted:
        converted = real(*args)
        (node,) = [n for n in converted.model.graph.node if n.op_type == "LinearClassifier"]
        (weights,) = [a for a in node.attribute if a.name == "coefficients"]
        scaled = [w * 1.02 for w in weights.floats]  # every weight 2% off: a subtly broken converter
        del weights.floats[:]
        weights.floats.extend(scaled)
        return converted

    monkeypatch.setattr("mlops_iac.convert.convert", tampered)
    report = convert_artifact("sklearn", path, features[:200], Options(measure_speed=False))
    assert not report.parity.passed
    probabilities = report.parity.outputs[1]
    assert not probabilities.passed and probabilities.max_abs_error > 1e-4
    assert "FAILED" in report.parity.describe()


def test_quantisation_is_kept_only_within_the_bound(cancer: tuple[np.ndarray, np.ndarray], tmp_path: Path) -> None:
    torch = require_module("torch")
    features, labels = _standardized(cancer[0]), cancer[1]
    path = tmp_path / "mlp.pt"
    torch.jit.save(torch.jit.script(_torch_mlp(features, labels)), str(path))
    strict = convert_artifact(
        "pytorch", path, features[:100], Options(quantize="dynamic-int8", atol=1e-6, rtol=1e-6, measure_speed=False)
    )
    assert strict.parity.passed and strict.quantization["kept"] is False
    assert "float model is kept" in strict.quantization["reason"]
    loose = convert_artifact(
        "pytorch", path, features[:100], Options(quantize="dynamic-int8", atol=1.0, rtol=1.0, measure_speed=False)
    )
    assert loose.quantization["kept"] is True
    assert any(
        n.op_type.startswith("DynamicQuantize") or "Integer" in n.op_type
        for n in onnx.load_from_string(loose.model).graph.node
    )


def test_onnx_artifacts_are_checked_and_external_data_stays_inside(tmp_path: Path) -> None:
    from onnx import TensorProto, helper

    weights = helper.make_tensor("w", TensorProto.FLOAT, [2, 2], [1.0, 2.0, 3.0, 4.0])
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["input", "w"], ["output"])],
        "g",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, [None, 2])],
        [helper.make_tensor_value_info("output", TensorProto.FLOAT, [None, 2])],
        [weights],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    good = tmp_path / "good.onnx"
    onnx.save(model, str(good))
    report = convert_artifact("onnx", good, np.ones((3, 2), np.float32), Options(measure_speed=False))
    assert report.parity.passed and report.signature["outputs"][0]["shape"] == [-1, 2]
    from onnx.external_data_helper import set_external_data

    evil = tmp_path / "models" / "evil.onnx"
    evil.parent.mkdir()
    (tmp_path / "outside.bin").write_bytes(np.array([1, 2, 3, 4], np.float32).tobytes())
    for location in ("../outside.bin", str(tmp_path / "outside.bin"), "sub/../../outside.bin"):
        outside = onnx.numpy_helper.from_array(np.array([[1, 2], [3, 4]], np.float32), "w")
        set_external_data(outside, location=location)
        outside.ClearField("raw_data")
        model.graph.initializer[0].CopyFrom(outside)
        onnx.save(model, str(evil))
        with pytest.raises(ConversionError, match="outside the model's folder"):
            check_external_data(evil)
        with pytest.raises(ConversionError, match="outside the model's folder"):
            convert_artifact("onnx", evil, np.ones((3, 2), np.float32), Options())
    broken = tmp_path / "broken.onnx"
    broken.write_bytes(b"not onnx at all")
    with pytest.raises(ConversionError):
        convert_artifact("onnx", broken, np.ones((3, 2), np.float32), Options())


def test_breaking_changes() -> None:
    old = {
        "inputs": [{"name": "input", "datatype": "FP32", "shape": [-1, 4]}],
        "outputs": [
            {"name": "label", "datatype": "INT64", "shape": [-1]},
            {"name": "probabilities", "datatype": "FP32", "shape": [-1, 3]},
        ],
    }
    assert breaking_changes(old, old) == []
    assert breaking_changes(None, old) == []
    wider = {**old, "inputs": [{"name": "input", "datatype": "FP32", "shape": [-1, 5]}]}
    assert breaking_changes(old, wider) == ["input 'input' changed shape [-1, 4] -> [-1, 5]"]
    fewer = {**old, "outputs": old["outputs"][:1]}
    assert breaking_changes(old, fewer) == ["output 'probabilities' was removed"]
    extra = {**old, "outputs": [*old["outputs"], {"name": "x", "datatype": "FP32", "shape": [-1]}]}
    assert breaking_changes(old, extra) == []  # a new output breaks nobody


def test_data_readers(tmp_path: Path) -> None:
    table = [["a", "b", "label"], ["1.5", "2", "0"], ["3", "4.25", "1"]]
    with open(tmp_path / "d.csv", "w", newline="") as handle:
        csv.writer(handle).writerows(table)
    features, labels = read_labelled(tmp_path / "d.csv")
    assert features.dtype == np.float32 and features.tolist() == [[1.5, 2.0], [3.0, 4.25]]
    assert labels is not None and labels.tolist() == [0, 1]
    import pyarrow as pa
    import pyarrow.parquet as pq

    pq.write_table(pa.table({"a": [1.0, 2.0], "target": [1, 0]}), tmp_path / "d.parquet")
    features, labels = read_labelled(tmp_path / "d.parquet", "target")
    assert features.tolist() == [[1.0], [2.0]] and labels is not None and labels.tolist() == [1, 0]
    np.savez(tmp_path / "d.npz", X=np.eye(2), y=np.array([0, 1]))
    assert read_features(tmp_path / "d.npz").shape == (2, 2)
    np.save(tmp_path / "empty.npy", np.zeros((0, 3)))
    with pytest.raises(DataError, match="non-empty"):
        read_features(tmp_path / "empty.npy")
    np.save(tmp_path / "features.npy", np.ones((2, 3)))
    with pytest.raises(DataError, match="no labels"):
        read_labelled(tmp_path / "features.npy")
    (tmp_path / "x.txt").write_text("1,2")
    with pytest.raises(DataError, match="unsupported"):
        read_features(tmp_path / "x.txt")


def test_cli_converts_records_and_gates(quickstart: Path) -> None:
    runner = CliRunner()
    assert runner.invoke(main, ["register", "iris", "--file", "model.joblib"]).exit_code == 0
    result = runner.invoke(main, ["convert", "iris@1"])
    assert result.exit_code == 0, result.output
    assert "parity on 45 sample rows: passed" in result.output
    assert "validation: accuracy" in result.output and "speed-up at batch 1:" in result.output
    locked = read_lock(quickstart / "mlops.lock").version("iris", 1)
    assert locked is not None and locked.onnx is not None and locked.validation is not None
    assert locked.onnx.parity["passed"] and locked.validation.passed
    assert [t.name for t in locked.onnx.outputs] == ["label", "probabilities"]
    shown = runner.invoke(main, ["models", "show", "iris@1"])
    assert shown.exit_code == 0, shown.output
    assert "status validated" in shown.output and "artifact   onnx" in shown.output
    pulled = runner.invoke(main, ["models", "pull", "iris@1", "--artifact", "onnx", "--to", "m.onnx"])
    assert pulled.exit_code == 0
    assert (
        "sha256:" + __import__("hashlib").sha256((quickstart / "m.onnx").read_bytes()).hexdigest() == locked.onnx.digest
    )


def test_cli_parity_failure_stores_nothing(quickstart: Path) -> None:
    spec = quickstart / "mlops.yaml"
    spec.write_text(
        spec.read_text().replace(
            "    sample: sample.npy\n", ("    sample: sample.npy\n    convert:\n      tolerance: {atol: 0, rtol: 0}\n")
        )
    )
    runner = CliRunner()
    registered = runner.invoke(main, ["register", "iris", "--file", "model.joblib"])
    assert registered.exit_code == 0, registered.output
    result = runner.invoke(main, ["convert", "iris@1", "--no-speed"])
    assert result.exit_code == 1
    assert "does not give the native model's answers" in result.output and "FAILED" in result.output
    assert (
        "onnx"
        not in runner.invoke(main, ["models", "show", "iris@1", "--json"]).output.split('"artifacts"')[1].split("}")[0]
    )
    locked = read_lock(quickstart / "mlops.lock").version("iris", 1)
    assert locked is not None and locked.onnx is None


def test_cli_validation_gate_rejects(quickstart: Path) -> None:
    spec = quickstart / "mlops.yaml"
    spec.write_text(spec.read_text().replace("threshold: 0.9", "threshold: 0.999"))
    runner = CliRunner()
    registered = runner.invoke(main, ["register", "iris", "--file", "model.joblib"])
    assert registered.exit_code == 0, registered.output
    result = runner.invoke(main, ["convert", "iris@1", "--no-speed"])
    assert result.exit_code == 1 and "REJECTED" in result.output
    assert "status rejected" in runner.invoke(main, ["models", "show", "iris@1"]).output
    guarded = runner.invoke(main, ["models", "alias", "iris@1", "production"])
    assert guarded.exit_code == 1 and "rejected by validation" in guarded.output
    locked = read_lock(quickstart / "mlops.lock").version("iris", 1)
    assert locked is not None and locked.validation is not None and not locked.validation.passed
