"""scikit-learn pipelines over DataFrames: check every step before converting, and name the inputs.

skl2onnx fails deep inside its topology code on a step it cannot express ("Unable to find a
shape calculator", "NotImplementedError: ... missing values are string"), which tells a user
neither which step nor what to use instead. `check` walks the fitted pipeline first (Pipeline
steps, ColumnTransformer transformers, FeatureUnion parts) and refuses the first problem with
its path in the pipeline, its class, and the supported alternatives.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from typing import Any

from ..errors import MlopsIacError
from .data import ColumnKind, Table


class UnsupportedStep(MlopsIacError):
    """A pipeline step that ONNX conversion cannot express."""


# What a tabular pipeline usually needs, and converts with parity; skl2onnx knows more.
SUPPORTED = {
    "composition": "Pipeline, ColumnTransformer (with 'drop' and 'passthrough'), FeatureUnion",
    "missing values": "SimpleImputer (numbers: any strategy; strings: missing_values='')",
    "encoders": "OneHotEncoder, OrdinalEncoder (on strings or numbers), TargetEncoder",
    "scalers": "StandardScaler, MinMaxScaler, MaxAbsScaler, RobustScaler, Normalizer, "
    "KBinsDiscretizer, PolynomialFeatures, PowerTransformer, QuantileTransformer",
    "estimators": "LogisticRegression, RandomForest*, ExtraTrees*, GradientBoosting*, "
    "HistGradientBoosting*, LGBMClassifier/LGBMRegressor, XGBClassifier/XGBRegressor, "
    "linear models, SVC/SVR, MLP*",
}


def alternatives() -> str:
    return "; ".join(f"{k}: {v}" for k, v in SUPPORTED.items())


def steps(model: Any, path: str = "") -> Iterator[tuple[str, Any]]:
    """Every (path, estimator) in a fitted pipeline, depth first, composites before their parts."""
    from sklearn.compose import ColumnTransformer
    from sklearn.pipeline import FeatureUnion, Pipeline

    yield path or type(model).__name__, model
    if isinstance(model, Pipeline):
        parts = [(name, step) for name, step in model.steps]
    elif isinstance(model, ColumnTransformer):
        parts = [(name, t) for name, t, _ in getattr(model, "transformers_", model.transformers)]
    elif isinstance(model, FeatureUnion):
        parts = list(model.transformer_list)
    else:
        return
    for name, part in parts:
        if isinstance(part, str):  # "drop" and "passthrough" need no converter
            continue
        yield from steps(part, f"{path}/{name}" if path else name)


def check(model: Any, artifact: str) -> None:
    """Refuse the first step that cannot be converted, by its path in the pipeline."""
    from skl2onnx._supported_operators import sklearn_operator_name_map

    for path, step in steps(model):
        what = f"{artifact}: step {path!r} ({type(step).__name__})"
        if type(step) not in sklearn_operator_name_map:
            raise UnsupportedStep(f"{what} has no ONNX converter. Supported steps: {alternatives()}")
        problem = _known_problem(step)
        if problem:
            raise UnsupportedStep(f"{what} {problem}. Supported steps: {alternatives()}")


def _known_problem(step: Any) -> str | None:
    """Settings that skl2onnx has a converter for, but cannot express."""
    from sklearn.impute import SimpleImputer
    from sklearn.preprocessing import FunctionTransformer

    if isinstance(step, FunctionTransformer) and step.func is not None:
        name = getattr(step.func, "__name__", repr(step.func))
        return (
            f"applies the Python function {name}, which ONNX cannot run; compute it before "
            "the pipeline, or use one of the supported steps"
        )
    if isinstance(step, SimpleImputer):
        statistics = getattr(step, "statistics_", None)
        on_strings = statistics is not None and statistics.dtype.kind in "OUS"
        missing = step.missing_values
        if on_strings and isinstance(missing, float) and math.isnan(missing):
            return (
                "imputes strings marked missing by NaN; a string tensor has no NaN, so mlops-iac "
                "passes a missing string as '': train with SimpleImputer(missing_values='', ...) "
                "on string columns whose gaps are filled with ''"
            )
    return None


def feature_names(model: Any) -> tuple[str, ...] | None:
    """The columns of the DataFrame the model was fitted on, in order; None for a matrix."""
    names = getattr(model, "feature_names_in_", None)
    return tuple(str(n) for n in names) if names is not None else None


def initial_types(table: Table) -> list[tuple[str, Any]]:
    """One ONNX input per column, shaped [batch, 1], typed from the column."""
    from skl2onnx.common.data_types import FloatTensorType, Int64TensorType, StringTensorType

    types: dict[ColumnKind, Any] = {"float": FloatTensorType, "int": Int64TensorType, "string": StringTensorType}
    return [(name, types[kind]([None, 1])) for name, kind in zip(table.names, table.kinds, strict=True)]


_SCALERS = {
    "StandardScaler",
    "MinMaxScaler",
    "RobustScaler",
    "MaxAbsScaler",
    "Normalizer",
    "PowerTransformer",
    "QuantileTransformer",
}


def parity_hint(model: Any) -> str | None:
    """Why a pipeline's ONNX answers may differ: a scaler in front of trees.

    ONNX computes the scaler in float32; a scaled value that lands next to a split threshold can
    fall on the other side of it than in the native float64 pipeline, and the tree answers from
    another leaf. Trees do not need scaled inputs.
    """
    parts = list(steps(model))
    final = parts[-1][1] if parts else model
    module = type(final).__module__
    trees = any(k in module for k in ("sklearn.ensemble", "sklearn.tree", "lightgbm", "xgboost"))
    scalers = [p for p, s in parts if type(s).__name__ in _SCALERS]
    if trees and scalers:
        return (
            f"the tree model {type(final).__name__} follows the scaler(s) at "
            f"{', '.join(map(repr, scalers))}: ONNX scales in float32, which moves values that "
            "sit on a split threshold to the other side. Trees need no scaling: pass those "
            "columns through (an imputer alone is fine)"
        )
    return None
