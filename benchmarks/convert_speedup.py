"""Native against ONNX latency, per model, per batch size, per onnxruntime thread count.

Azure ML says ONNX makes models "about twice as fast on average". This measures it on the
models issue 4 converts, trained on scikit-learn's breast cancer data (30 features):
median latency of the native call (`predict_proba`, or the torch forward pass) and of
`session.run` at batch 1 and batch 1000, and the ratio. Everything in one process, one
model at a time, warm-up first.

One more row: a DataFrame pipeline as users write them (ColumnTransformer: impute and scale
the numbers, impute and one-hot/ordinal-encode the strings, then LogisticRegression and
LightGBM) on scikit-learn's wine data with derived string and integer columns: native
`predict_proba(DataFrame)` against `session.run` with one tensor per column, both given their
input ready-made.

    python benchmarks/convert_speedup.py [--repeat 200] [--threads 1 2] [--only-frames]
"""

from __future__ import annotations

import argparse
import tempfile
import warnings
from pathlib import Path
from typing import Any

import joblib
import numpy as np
from sklearn.datasets import load_breast_cancer

from mlops_iac.convert import Options, convert_artifact
from mlops_iac.convert.data import Sample, Table, feed, table_of, tile_rows
from mlops_iac.convert.measure import median_seconds
from mlops_iac.convert.onnx_tools import session


def models() -> dict[str, tuple[str, Any]]:
    from lightgbm import LGBMClassifier
    from sklearn.ensemble import HistGradientBoostingClassifier, RandomForestClassifier
    from sklearn.linear_model import LogisticRegression
    from sklearn.neural_network import MLPClassifier
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler
    from xgboost import XGBClassifier

    return {
        "LogisticRegression": ("sklearn", LogisticRegression(max_iter=5000)),
        "RandomForest (100 trees, depth 10)": ("sklearn", RandomForestClassifier(100, max_depth=10, random_state=0)),
        "HistGradientBoosting (100)": ("sklearn", HistGradientBoostingClassifier(max_iter=100, random_state=0)),
        "Pipeline (scaler + LR)": ("sklearn", make_pipeline(StandardScaler(), LogisticRegression(max_iter=1000))),
        "MLP 64x64": (
            "sklearn",
            make_pipeline(StandardScaler(), MLPClassifier((64, 64), max_iter=500, random_state=0)),
        ),
        "LightGBM (100)": ("lightgbm", LGBMClassifier(n_estimators=100, verbose=-1, random_state=0)),
        "XGBoost (100)": ("xgboost", XGBClassifier(n_estimators=100, random_state=0)),
    }


def torch_mlp(features: np.ndarray, labels: np.ndarray, folder: Path) -> tuple[Path, Any]:
    import torch

    torch.manual_seed(0)
    torch.set_num_threads(1)
    net = torch.nn.Sequential(
        torch.nn.Linear(30, 64), torch.nn.ReLU(), torch.nn.Linear(64, 64), torch.nn.ReLU(), torch.nn.Linear(64, 2)
    )
    opt = torch.optim.Adam(net.parameters(), lr=0.01)
    for _ in range(100):
        opt.zero_grad()
        torch.nn.functional.cross_entropy(net(torch.tensor(features)), torch.tensor(labels)).backward()
        opt.step()
    net.eval()
    path = folder / "mlp.pt"
    torch.jit.save(torch.jit.script(net), str(path))

    def call(x: np.ndarray) -> Any:
        with torch.no_grad():
            return net(torch.from_numpy(x))

    return path, call


def frame_pipelines(folder: Path) -> list[tuple[str, str, Path, Any, Sample]]:
    """DataFrame pipelines on wine with derived columns (the same frame as the tests use)."""
    import sys

    from lightgbm import LGBMClassifier
    from sklearn.linear_model import LogisticRegression

    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    from tests.tabular_data import pipeline, wine_frame

    frame, labels = wine_frame()
    cases = []
    for name, framework, estimator, scaled in (
        ("DataFrame pipeline + LR", "sklearn", LogisticRegression(max_iter=5000), True),
        (
            "DataFrame pipeline + LightGBM (100)",
            "lightgbm",
            LGBMClassifier(n_estimators=100, verbose=-1, random_state=0),
            False,
        ),
    ):
        model = pipeline(estimator)
        if not scaled:  # trees take the numbers as they are
            model.steps[0][1].transformers[0][1].steps.pop()
        model.fit(frame, labels)
        path = folder / f"frame-{len(cases)}.joblib"
        joblib.dump(model, path)
        cases.append((name, framework, path, model.predict_proba, table_of(frame)))
    return cases


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--repeat", type=int, default=200)
    parser.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--only-frames", action="store_true", help="Only the DataFrame pipeline rows.")
    args = parser.parse_args()
    warnings.filterwarnings("ignore")
    features, labels = load_breast_cancer(return_X_y=True)
    features = ((features - features.mean(0)) / features.std(0)).astype(np.float32)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        cases: list[tuple[str, str, Path, Any, Sample]] = []
        chosen = models() if not args.only_frames else {}
        for name, (framework, model) in chosen.items():
            model.fit(features, labels)
            path = folder / f"{len(cases)}.joblib"
            joblib.dump(model, path)
            cases.append((name, framework, path, model.predict_proba, features))
        try:
            if not args.only_frames:
                path, call = torch_mlp(features, labels, folder)
                cases.append(("PyTorch MLP 64x64", "pytorch", path, call, features))
        except ImportError:
            print("(torch not installed: the PyTorch MLP is left out)")
        cases += frame_pipelines(folder)
        for name, framework, path, native, data in cases:
            report = convert_artifact(framework, path, tile_rows(data, 100), Options(measure_speed=False))
            assert report.parity.passed, f"{name}: parity failed"
            for batch in (1, 1000):
                x = tile_rows(data, batch)
                given = x.frame() if isinstance(x, Table) else x  # made before timing, as the feed is
                repeat = args.repeat if batch == 1 else max(10, args.repeat // 10)
                native_s = median_seconds(lambda x=given, f=native: f(x), repeat, budget_s=5)
                for threads in args.threads:
                    sess = session(report.model, threads=threads)
                    inputs = feed(sess.get_inputs(), x)
                    onnx_s = median_seconds(lambda f=inputs, s=sess: s.run(None, f), repeat, budget_s=5)
                    rows.append((name, batch, threads, native_s, onnx_s))
    print(f"{'model':36} {'batch':>5} {'ORT threads':>11} {'native ms':>10} {'ONNX ms':>9} {'speed-up':>9}")
    for name, batch, threads, native_s, onnx_s in rows:
        print(
            f"{name:36} {batch:>5} {threads:>11} {native_s * 1e3:>10.4f} {onnx_s * 1e3:>9.4f} "
            f"{native_s / onnx_s:>8.1f}x"
        )


if __name__ == "__main__":
    main()
