"""Train the quickstart's model: a scaled logistic regression on scikit-learn's iris data.

Writes model.joblib (the trained artifact), sample.npy (inputs for the parity check and
profiling) and holdout.npz (labelled data for the validation gate). Nothing is downloaded:
the data set ships inside scikit-learn.
"""

from __future__ import annotations

from pathlib import Path

import joblib
import numpy as np
from sklearn.datasets import load_iris
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import train_test_split
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

HERE = Path(__file__).resolve().parent


def main() -> None:
    features, labels = load_iris(return_X_y=True)
    features = features.astype(np.float32)
    x_train, x_test, y_train, y_test = train_test_split(
        features, labels, test_size=0.3, random_state=0, stratify=labels
    )
    model = make_pipeline(StandardScaler(), LogisticRegression(max_iter=500))
    model.fit(x_train, y_train)
    accuracy = float(model.score(x_test, y_test))
    joblib.dump(model, HERE / "model.joblib")
    np.save(HERE / "sample.npy", x_test)
    np.savez(HERE / "holdout.npz", X=x_test, y=y_test)
    print(f"trained iris classifier: hold-out accuracy {accuracy:.3f}")


if __name__ == "__main__":
    main()
