"""A small mixed-type table for the DataFrame-pipeline tests: scikit-learn's bundled wine data
with two derived string columns (one with gaps) and an integer column, as users' frames look."""

from __future__ import annotations

from typing import Any

import numpy as np
from sklearn.base import BaseEstimator, TransformerMixin


class Clipper(BaseEstimator, TransformerMixin):  # type: ignore[misc]
    """A user's own transformer: fine in Python, unknown to every ONNX converter."""

    def fit(self, x: Any, y: Any = None) -> Clipper:
        return self

    def transform(self, x: Any) -> Any:
        return np.clip(x, -3, 3)


def wine_frame() -> tuple[Any, np.ndarray]:
    import pandas as pd
    from sklearn.datasets import load_wine

    data = load_wine(as_frame=True)
    frame = data.data[["alcohol", "malic_acid", "color_intensity", "hue", "proline"]].copy()
    rng = np.random.default_rng(0)
    # A categorical column that carries signal, one without, and an integer count.
    frame["region"] = np.where(frame["alcohol"] > 13.0, "north", "south")
    frame.loc[rng.random(len(frame)) < 0.1, "region"] = "coast"
    frame["cask"] = rng.choice(["oak", "steel", ""], size=len(frame))  # "" is a missing string
    frame["age_years"] = rng.integers(1, 20, size=len(frame)).astype(np.int64)
    frame.loc[rng.random(len(frame)) < 0.05, "hue"] = np.nan  # numeric gaps for the imputer
    return pd.DataFrame(frame), np.asarray(data.target)


def pipeline(estimator: Any) -> Any:
    from sklearn.compose import ColumnTransformer
    from sklearn.impute import SimpleImputer
    from sklearn.pipeline import Pipeline, make_pipeline
    from sklearn.preprocessing import OneHotEncoder, OrdinalEncoder, StandardScaler

    numeric = ["alcohol", "malic_acid", "color_intensity", "hue", "proline", "age_years"]
    pre = ColumnTransformer(
        [
            ("num", make_pipeline(SimpleImputer(strategy="median"), StandardScaler()), numeric),
            ("region", OneHotEncoder(handle_unknown="ignore"), ["region"]),
            (
                "cask",
                make_pipeline(
                    SimpleImputer(missing_values="", strategy="constant", fill_value="none"),
                    OrdinalEncoder(handle_unknown="use_encoded_value", unknown_value=-1),
                ),
                ["cask"],
            ),
        ]
    )
    return Pipeline([("pre", pre), ("model", estimator)])
