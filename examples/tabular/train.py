"""Train the tabular example: a DataFrame pipeline on the Palmer penguins, as users write them.

The data ships inside the `palmerpenguins` wheel (nothing is downloaded): 344 penguins with
string columns (island, sex), float measurements with gaps, and an integer year. The
pipeline imputes and one-hot encodes by column name, then a LightGBM classifier predicts the
species.

Writes model.joblib (the fitted pipeline), sample.parquet (rows for the parity check and
profiling, with their columns and types) and holdout.parquet (held-out rows with their
species: the validation gate, and what predict.py sends to the server).
"""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Any

import joblib
from lightgbm import LGBMClassifier
from palmerpenguins import load_penguins
from sklearn.compose import ColumnTransformer
from sklearn.impute import SimpleImputer
from sklearn.model_selection import train_test_split
from sklearn.pipeline import Pipeline, make_pipeline
from sklearn.preprocessing import OneHotEncoder

HERE = Path(__file__).resolve().parent
LABEL = "species"
MEASUREMENTS = ["bill_length_mm", "bill_depth_mm", "flipper_length_mm", "body_mass_g"]
CATEGORIES = ["island", "sex"]


def load() -> tuple[Any, Any]:
    frame = load_penguins()
    # A string tensor has no null: a missing string travels as "", in training as in serving.
    frame["sex"] = frame["sex"].fillna("").astype(str)
    frame["island"] = frame["island"].astype(str)
    labels = frame.pop(LABEL).astype(str)
    return frame, labels


def pipeline() -> Pipeline:
    columns = ColumnTransformer(
        [
            # Trees need no scaling: the measurements only have their gaps filled.
            ("measurements", SimpleImputer(strategy="median"), MEASUREMENTS),
            (
                "categories",
                make_pipeline(
                    SimpleImputer(missing_values="", strategy="constant", fill_value="unknown"),
                    OneHotEncoder(handle_unknown="ignore"),
                ),
                CATEGORIES,
            ),
            ("year", "passthrough", ["year"]),
        ]
    )
    return Pipeline(
        [("columns", columns), ("model", LGBMClassifier(n_estimators=60, num_leaves=8, random_state=0, verbose=-1))]
    )


def main() -> None:
    warnings.filterwarnings("ignore", message="X does not have valid feature names")
    frame, labels = load()
    x_train, x_test, y_train, y_test = train_test_split(frame, labels, test_size=0.25, random_state=0, stratify=labels)
    model = pipeline().fit(x_train, y_train)
    accuracy = float(model.score(x_test, y_test))
    joblib.dump(model, HERE / "model.joblib")
    x_train.head(100).to_parquet(HERE / "sample.parquet", index=False)
    x_test.assign(**{LABEL: y_test}).to_parquet(HERE / "holdout.parquet", index=False)
    print(f"trained penguin classifier on {len(x_train)} rows: hold-out accuracy {accuracy:.3f} on {len(x_test)} rows")


if __name__ == "__main__":
    main()
