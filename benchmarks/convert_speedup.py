"""Native against ONNX latency, per model, per batch size, per onnxruntime thread count.

Azure ML says ONNX makes models "about twice as fast on average". This measures it on the
models issue 4 converts, trained on scikit-learn's breast cancer data (30 features):
median latency of the native call (`predict_proba`, or the torch forward pass) and of
`session.run` at batch 1 and batch 1000, and the ratio. Everything in one process, one
model at a time, warm-up first.

    python benchmarks/convert_speedup.py [--repeat 200] [--threads 1 2]
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
from mlops_iac.convert.measure import median_seconds, tile
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
        "MLP 64x64": ("sklearn", make_pipeline(StandardScaler(),
                                               MLPClassifier((64, 64), max_iter=500, random_state=0))),
        "LightGBM (100)": ("lightgbm", LGBMClassifier(n_estimators=100, verbose=-1, random_state=0)),
        "XGBoost (100)": ("xgboost", XGBClassifier(n_estimators=100, random_state=0)),
    }


def torch_mlp(features: np.ndarray, labels: np.ndarray, folder: Path) -> tuple[Path, Any]:
    import torch

    torch.manual_seed(0)
    torch.set_num_threads(1)
    net = torch.nn.Sequential(torch.nn.Linear(30, 64), torch.nn.ReLU(), torch.nn.Linear(64, 64),
                              torch.nn.ReLU(), torch.nn.Linear(64, 2))
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


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--repeat", type=int, default=200)
    parser.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    args = parser.parse_args()
    warnings.filterwarnings("ignore")
    features, labels = load_breast_cancer(return_X_y=True)
    features = ((features - features.mean(0)) / features.std(0)).astype(np.float32)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        cases: list[tuple[str, str, Path, Any]] = []
        for name, (framework, model) in models().items():
            model.fit(features, labels)
            path = folder / f"{len(cases)}.joblib"
            joblib.dump(model, path)
            cases.append((name, framework, path, model.predict_proba))
        try:
            path, call = torch_mlp(features, labels, folder)
            cases.append(("PyTorch MLP 64x64", "pytorch", path, call))
        except ImportError:
            print("(torch not installed: the PyTorch MLP is left out)")
        for name, framework, path, native in cases:
            report = convert_artifact(framework, path, features[:100], Options(measure_speed=False))
            assert report.parity.passed, f"{name}: parity failed"
            for batch in (1, 1000):
                x = tile(features, batch)
                repeat = args.repeat if batch == 1 else max(10, args.repeat // 10)
                native_s = median_seconds(lambda x=x, f=native: f(x), repeat, budget_s=5)
                for threads in args.threads:
                    sess = session(report.model, threads=threads)
                    onnx_s = median_seconds(lambda x=x, s=sess: s.run(None, {"input": x}), repeat, budget_s=5)
                    rows.append((name, batch, threads, native_s, onnx_s))
    print(f"{'model':36} {'batch':>5} {'ORT threads':>11} {'native ms':>10} {'ONNX ms':>9} {'speed-up':>9}")
    for name, batch, threads, native_s, onnx_s in rows:
        print(f"{name:36} {batch:>5} {threads:>11} {native_s * 1e3:>10.4f} {onnx_s * 1e3:>9.4f} "
              f"{native_s / onnx_s:>8.1f}x")


if __name__ == "__main__":
    main()
