"""Native against ONNX latency, and the validation metric, on the model's own data."""

from __future__ import annotations

import functools
import statistics
import time
from collections.abc import Callable
from typing import Any

import numpy as np

from . import onnx_tools
from .data import Sample, feed, tile_rows

METRICS_LOWER_IS_BETTER = {"rmse", "mae"}


def median_seconds(call: Callable[[], Any], repeat: int, budget_s: float = 2.0) -> float:
    """Median of `repeat` timed calls after a warm-up (fewer if the budget runs out)."""
    call()
    samples = []
    deadline = time.perf_counter() + budget_s
    for _ in range(repeat):
        start = time.perf_counter()
        call()
        samples.append(time.perf_counter() - start)
        if time.perf_counter() > deadline and len(samples) >= 5:
            break
    return statistics.median(samples)


def tile(sample: np.ndarray, rows: int) -> np.ndarray:
    reps = -(-rows // len(sample))
    return np.ascontiguousarray(np.tile(sample, (reps, 1))[:rows])


def speedup(
    native: Callable[[Any], Any],
    model: bytes,
    sample: Sample,
    batches: tuple[int, ...] = (1, 1000),
    prepare: Callable[[Sample], Any] | None = None,
) -> dict[str, Any]:
    """Median latency of the native call and of onnxruntime (one thread) per batch size.

    Both sides get their input ready-made (a DataFrame for a pipeline, the feed for ONNX), so
    only the calls are timed.
    """
    sess = onnx_tools.session(model, threads=1)
    out: dict[str, Any] = {"threads": 1}
    for batch in batches:
        rows = tile_rows(sample, batch)
        x = prepare(rows) if prepare else rows
        repeat = 200 if batch == 1 else 30
        native_s = median_seconds(functools.partial(native, x), repeat)
        onnx_s = median_seconds(functools.partial(sess.run, None, feed(sess.get_inputs(), rows)), repeat)
        out[f"batch{batch}"] = {
            "nativeMs": round(native_s * 1000, 4),
            "onnxMs": round(onnx_s * 1000, 4),
            "speedup": round(native_s / onnx_s, 2),
        }
    return out


def metric(name: str, labels: np.ndarray, outputs: list[np.ndarray]) -> float:
    """The validation metric; one that does not fit the model (roc_auc of a regressor) is the
    user's choice to fix, so it is a clear error, not a traceback from scikit-learn."""
    from .frameworks import ConversionError

    try:
        return _metric(name, labels, outputs)
    except (ValueError, IndexError) as exc:
        kind = (
            "a regression metric: rmse, mae or r2"
            if name in ("accuracy", "f1", "precision", "recall", "roc_auc")
            else "a classification metric: accuracy, f1, precision, recall or roc_auc"
        )
        raise ConversionError(
            f"validate.metric {name!r} cannot be computed from this model's outputs "
            f"({exc}); if the model is of the other kind, use {kind}"
        ) from None


def _metric(name: str, labels: np.ndarray, outputs: list[np.ndarray]) -> float:
    from sklearn import metrics as m

    prediction = outputs[0].reshape(len(labels), -1)
    if name in ("rmse", "mae", "r2"):
        values = prediction[:, 0].astype(np.float64)
        if name == "rmse":
            return float(np.sqrt(m.mean_squared_error(labels, values)))
        return float(m.mean_absolute_error(labels, values) if name == "mae" else m.r2_score(labels, values))
    predicted = prediction[:, 0]
    binary = len(np.unique(labels)) <= 2
    average = "binary" if binary else "macro"
    if name == "accuracy":
        return float(m.accuracy_score(labels, predicted))
    if name == "f1":
        return float(m.f1_score(labels, predicted, average=average))
    if name == "precision":
        return float(m.precision_score(labels, predicted, average=average, zero_division=0))
    if name == "recall":
        return float(m.recall_score(labels, predicted, average=average))
    if name == "roc_auc":
        if len(outputs) < 2:
            raise ValueError("roc_auc needs probabilities; this model gives labels only")
        proba = outputs[1]
        return float(
            m.roc_auc_score(labels, proba[:, 1]) if binary else m.roc_auc_score(labels, proba, multi_class="ovr")
        )
    raise ValueError(f"unknown metric {name!r}")


def meets(name: str, value: float, threshold: float) -> bool:
    return value <= threshold if name in METRICS_LOWER_IS_BETTER else value >= threshold
