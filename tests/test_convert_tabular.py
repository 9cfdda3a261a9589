"""DataFrame pipelines: one ONNX input per column, tables as samples, located refusals."""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import joblib
import numpy as np
import onnxruntime as ort
import pytest
from click.testing import CliRunner

from mlops_iac.cli import main
from mlops_iac.convert import Options, UnsupportedStep, Validation, convert_artifact
from mlops_iac.convert.data import (
    DataError,
    Table,
    complete_rows,
    feed,
    read_examples,
    read_sample,
    table_of,
    v2_tensors,
)
from mlops_iac.signatures import breaking_changes

from .tabular_data import Clipper, pipeline, wine_frame

COLUMNS = [
    ("alcohol", "FP32"),
    ("malic_acid", "FP32"),
    ("color_intensity", "FP32"),
    ("hue", "FP32"),
    ("proline", "FP32"),
    ("region", "BYTES"),
    ("cask", "BYTES"),
    ("age_years", "INT64"),
]


def _estimators() -> dict[str, tuple[str, Any]]:
    from lightgbm import LGBMClassifier
    from sklearn.ensemble import RandomForestClassifier
    from sklearn.linear_model import LogisticRegression
    from xgboost import XGBClassifier

    return {
        "logistic-regression": ("sklearn", LogisticRegression(max_iter=5000)),
        # Not HistGradientBoosting here: it splits on float64 thresholds, so a held-out value
        # within float32 rounding of one can differ (the sample's parity check measures that).
        "random-forest": ("sklearn", RandomForestClassifier(n_estimators=30, random_state=0)),
        "lightgbm": ("lightgbm", LGBMClassifier(n_estimators=30, verbose=-1, random_state=0)),
        "xgboost": ("xgboost", XGBClassifier(n_estimators=30, random_state=0)),
    }


def _fit(estimator: Any, folder: Path, *, scaled: bool = True) -> tuple[Path, Any, Any, np.ndarray]:
    frame, labels = wine_frame()
    model = pipeline(estimator)
    if not scaled:  # trees: the numeric columns only imputed (see pipeline.parity_hint)
        model.steps[0][1].transformers[0][1].steps.pop()
    model.fit(frame.iloc[::2], labels[::2])
    path = folder / "model.joblib"
    joblib.dump(model, path)
    return path, model, frame, labels


@pytest.mark.parametrize("name", list(_estimators()))
def test_dataframe_pipeline_converts_one_input_per_column(name: str, tmp_path: Path) -> None:
    framework, estimator = _estimators()[name]
    trees = name != "logistic-regression"
    path, model, frame, labels = _fit(estimator, tmp_path, scaled=not trees)
    frame.iloc[::2].head(60).to_parquet(tmp_path / "sample.parquet", index=False)
    sample = read_sample(tmp_path / "sample.parquet")
    held_out = frame.iloc[1::2]
    report = convert_artifact(
        framework,
        path,
        sample,
        Options(measure_speed=False),
        validation=Validation(table_of(held_out), labels[1::2], "accuracy", 0.8),
    )
    assert report.parity.passed, report.parity.describe()
    # The columns of the training frame, in its order, with their types.
    assert [(t["name"], t["datatype"], t["shape"]) for t in report.signature["inputs"]] == [
        (n, d, [-1, 1]) for n, d in COLUMNS
    ]
    assert report.validation is not None and report.validation["passed"]
    # The ONNX model answers the held-out rows as the native pipeline does.
    session = ort.InferenceSession(report.model, providers=["CPUExecutionProvider"])
    label, proba = session.run(None, feed(session.get_inputs(), table_of(held_out)))
    np.testing.assert_allclose(proba, model.predict_proba(held_out), atol=1e-5, rtol=1e-4)
    assert (label == model.predict(held_out)).all()


def test_csv_sample_and_timing_of_a_pipeline(tmp_path: Path) -> None:
    from sklearn.linear_model import LogisticRegression

    path, _, frame, _ = _fit(LogisticRegression(max_iter=5000), tmp_path)
    frame.head(40).to_csv(tmp_path / "sample.csv", index=False)
    sample = read_sample(tmp_path / "sample.csv")
    assert isinstance(sample, Table) and sample.kind("cask") == "string" and sample.kind("age_years") == "int"
    assert "" in sample.columns[sample.names.index("cask")].tolist()  # an empty CSV cell: a missing string
    report = convert_artifact("sklearn", path, sample, Options())
    assert report.parity.passed, report.parity.describe()
    assert set(report.speedup) == {"threads", "batch1", "batch1000"}
    assert report.speedup["batch1000"]["onnxMs"] > 0


def test_the_sample_must_hold_the_training_columns(tmp_path: Path) -> None:
    from sklearn.linear_model import LogisticRegression

    path, _, frame, _ = _fit(LogisticRegression(max_iter=5000), tmp_path)
    frame.drop(columns=["cask"]).to_parquet(tmp_path / "partial.parquet", index=False)
    with pytest.raises(DataError, match=r"partial.parquet lacks column\(s\) 'cask' that the model takes"):
        convert_artifact("sklearn", path, read_sample(tmp_path / "partial.parquet"), Options())
    with pytest.raises(DataError, match="fitted on a DataFrame with columns alcohol, malic_acid"):
        convert_artifact("sklearn", path, np.ones((3, 8), dtype=np.float32), Options())
    # Extra columns (a label, an id) are left out, not refused.
    report = convert_artifact(
        "sklearn", path, table_of(frame.assign(id=range(len(frame)))), Options(measure_speed=False)
    )
    assert report.parity.passed and "id" not in [t["name"] for t in report.signature["inputs"]]


def _with_step(kind: str) -> Any:
    from sklearn.impute import SimpleImputer
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import FunctionTransformer, OneHotEncoder

    model = pipeline(LogisticRegression(max_iter=5000))
    transformers = model.steps[0][1].transformers
    if kind == "function":
        transformers[0][1].steps.append(("log", FunctionTransformer(np.tanh)))
    elif kind == "custom":
        transformers[0][1].steps.append(("clip", Clipper()))
    else:  # strings whose gaps are NaN: a string tensor has no NaN
        transformers[1] = (
            "region",
            make_pipeline(SimpleImputer(strategy="most_frequent"), OneHotEncoder(handle_unknown="ignore")),
            ["region"],
        )
    return model


@pytest.mark.parametrize(
    ("kind", "where", "why"),
    [
        ("function", "'pre/num/log' (FunctionTransformer)", "applies the Python function tanh"),
        ("custom", "'pre/num/clip' (Clipper)", "has no ONNX converter"),
        ("nan-strings", "'pre/region/simpleimputer' (SimpleImputer)", "SimpleImputer(missing_values=''"),
    ],
)
def test_an_unsupported_step_is_named_with_alternatives(kind: str, where: str, why: str, tmp_path: Path) -> None:
    frame, labels = wine_frame()
    if kind == "nan-strings":
        frame.loc[frame.index[:5], "region"] = np.nan
    model = _with_step(kind).fit(frame, labels)
    joblib.dump(model, tmp_path / "model.joblib")
    with pytest.raises(UnsupportedStep) as error:
        convert_artifact("sklearn", tmp_path / "model.joblib", table_of(frame), Options())
    message = str(error.value)
    assert message.startswith(f"model.joblib: step {where}"), message
    assert why in message and "OneHotEncoder, OrdinalEncoder" in message and "StandardScaler" in message


def test_cli_refuses_an_unsupported_step_without_a_traceback(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    frame, labels = wine_frame()
    model = _with_step("function").fit(frame, labels)
    joblib.dump(model, tmp_path / "model.joblib")
    frame.head(30).to_parquet(tmp_path / "sample.parquet", index=False)
    shutil.copyfile(Path(__file__).parents[1] / "examples" / "tabular" / "mlops.yaml", tmp_path / "mlops.yaml")
    text = (tmp_path / "mlops.yaml").read_text().replace("framework: lightgbm", "framework: sklearn")
    without_validation = text.split("    validate:")[0] + "    profile:" + text.split("    profile:")[1]
    (tmp_path / "mlops.yaml").write_text(without_validation)
    monkeypatch.chdir(tmp_path)
    runner = CliRunner()
    assert runner.invoke(main, ["register", "penguins", "--file", "model.joblib"]).exit_code == 0
    result = runner.invoke(main, ["convert", "penguins@1"])
    assert result.exit_code == 1
    assert "error: model.joblib: step 'pre/num/log' (FunctionTransformer) applies the Python function" in result.output
    assert "Traceback" not in result.output
    index = (tmp_path / ".mlops" / "registry" / "index" / "penguins.json").read_text()
    assert '"onnx"' not in index  # nothing was stored


def test_a_scaler_before_trees_fails_parity_with_its_cause(tmp_path: Path) -> None:
    from sklearn.ensemble import RandomForestClassifier

    path, _, frame, _ = _fit(RandomForestClassifier(30, random_state=0), tmp_path)
    report = convert_artifact("sklearn", path, table_of(frame), Options(measure_speed=False))
    assert not report.parity.passed  # float32 scaling moves values across split thresholds
    assert report.hint is not None and "'pre/num/standardscaler'" in report.hint
    assert "Trees need no scaling" in report.hint


def test_tables_read_typed_columns(tmp_path: Path) -> None:
    import pandas as pd

    frame = pd.DataFrame(
        {"x": [1.5, None, 3.0], "n": [1, 2, 3], "flag": [True, False, True], "s": ["a", None, "c"], "label": [0, 1, 1]}
    )
    frame.to_parquet(tmp_path / "t.parquet", index=False)
    table, labels = read_examples(tmp_path / "t.parquet")
    assert isinstance(table, Table) and table.names == ("x", "n", "flag", "s")
    assert table.kinds == ("float", "int", "int", "string")
    assert labels is not None and labels.tolist() == [0, 1, 1]
    assert np.isnan(table.columns[0][1]) and table.columns[3].tolist() == ["a", "", "c"]
    assert [c["datatype"] for c in table.signature()] == ["FP32", "INT64", "INT64", "BYTES"]
    with pytest.raises(DataError, match="no labels found"):
        read_examples(tmp_path / "t.parquet", "target")
    pd.DataFrame({"when": pd.to_datetime(["2024-01-01"])}).to_parquet(tmp_path / "d.parquet")
    with pytest.raises(DataError, match=r"column 'when' has dtype datetime64"):
        read_sample(tmp_path / "d.parquet")
    # A numeric table still feeds a model that takes one matrix, and strings are refused there.
    numeric = table_of(frame[["x", "n"]])
    inputs = [type("Input", (), {"name": "input", "type": "tensor(float)", "shape": [None, 2]})()]
    assert feed(inputs, numeric)["input"].shape == (3, 2)
    with pytest.raises(DataError, match="column\\(s\\) 's' hold strings"):
        feed(inputs, table)
    # A JSON request carries the rows without a missing number, one tensor per column.
    columns = [
        type("Input", (), {"name": n, "type": t, "shape": [None, 1]})()
        for n, t in (("x", "tensor(float)"), ("s", "tensor(string)"))
    ]
    assert v2_tensors(columns, complete_rows(table)) == [
        {"name": "x", "datatype": "FP32", "shape": [2, 1], "data": [1.5, 3.0]},
        {"name": "s", "datatype": "BYTES", "shape": [2, 1], "data": ["a", "c"]},
    ]


def test_column_changes_are_breaking() -> None:
    frame, _ = wine_frame()
    old = {"inputs": table_of(frame).signature(), "outputs": []}
    renamed = table_of(frame.rename(columns={"cask": "barrel"})).signature()
    assert breaking_changes(old, {"inputs": renamed, "outputs": []}) == [
        "column 'cask' (BYTES) was removed",
        "column 'barrel' (BYTES) is new and required",
    ]
    retyped = table_of(frame.assign(age_years=frame["age_years"].astype(float))).signature()
    assert breaking_changes(old, {"inputs": retyped, "outputs": []}) == [
        "column 'age_years' changed datatype INT64 -> FP32"
    ]
    dropped = table_of(frame.drop(columns=["hue"])).signature()
    assert breaking_changes(old, {"inputs": dropped, "outputs": []}) == ["column 'hue' (FP32) was removed"]


@pytest.mark.parametrize("binary", [False, True])
def test_tritonclient_sends_one_tensor_per_column(binary: bool, tmp_path: Path) -> None:
    """The v2 way for a DataFrame pipeline: tritonclient's InferInput per column, strings as BYTES,
    answers as in-process onnxruntime gives them. The string columns need the server to hand
    BYTES inputs to onnxruntime as str (the server's string-handling fix)."""
    import tritonclient.http as httpclient
    from sklearn.linear_model import LogisticRegression

    from .server_fixtures import Models, model_entry, running_server

    path, _, frame, _ = _fit(LogisticRegression(max_iter=5000), tmp_path)
    report = convert_artifact("sklearn", path, table_of(frame.head(50)), Options(measure_speed=False))
    (tmp_path / "wine.onnx").write_bytes(report.model)
    models = Models(tmp_path, np.zeros((1, 1)), np.zeros((1, 1)))
    held_out = frame.iloc[1::7]
    rows = table_of(held_out if binary else held_out.dropna())  # JSON has no NaN; the binary extension has
    session = ort.InferenceSession(report.model, providers=["CPUExecutionProvider"])
    expected = session.run(None, feed(session.get_inputs(), rows))
    with running_server(models, {"models": [model_entry(models, "wine")]}) as server:
        client = httpclient.InferenceServerClient(server.url)
        meta = client.get_model_metadata("wine")
        assert [(i["name"], i["datatype"], i["shape"]) for i in meta["inputs"]] == [(n, d, [-1, 1]) for n, d in COLUMNS]
        tensors = []
        for name, array in feed(session.get_inputs(), rows).items():
            datatype = {"f": "FP32", "i": "INT64", "O": "BYTES"}[array.dtype.kind]
            tensor = httpclient.InferInput(name, list(array.shape), datatype)
            tensor.set_data_from_numpy(array, binary_data=binary)
            tensors.append(tensor)
        result = client.infer(
            "wine",
            tensors,
            outputs=[
                httpclient.InferRequestedOutput("label", binary_data=binary),
                httpclient.InferRequestedOutput("probabilities", binary_data=binary),
            ],
        )
        assert np.array_equal(result.as_numpy("label"), expected[0])
        np.testing.assert_allclose(result.as_numpy("probabilities"), expected[1], rtol=0, atol=1e-6)
