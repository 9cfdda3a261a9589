"""Send the held-out penguins to the served model over the v2 protocol, one tensor per column,
and compare its answers with the native pipeline's predict_proba.

Strings go as BYTES, the integer year as INT64, and the measurements as FP32 in the binary
tensor extension: JSON has no NaN, and a missing measurement is NaN. Exits non-zero when a
label differs or a probability differs by more than the parity tolerances in mlops.lock.
"""

from __future__ import annotations

import json
import sys
import time
import urllib.error
import urllib.request
import warnings
from pathlib import Path
from typing import Any

import joblib
import numpy as np
import pandas as pd
import yaml

HERE = Path(__file__).resolve().parent
URL = sys.argv[1] if len(sys.argv) > 1 else "http://127.0.0.1:8080"


def wait_ready(timeout_s: float = 60) -> None:
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            with urllib.request.urlopen(f"{URL}/v2/health/ready", timeout=1) as response:
                if response.status == 200:
                    return
        except (urllib.error.URLError, OSError):
            pass
        if time.monotonic() > deadline:
            sys.exit(f"the server at {URL} did not become ready")
        time.sleep(0.2)


def request(frame: pd.DataFrame) -> tuple[bytes, int]:
    """A v2 request: JSON tensors for strings and ints, binary FP32 for the measurements."""
    tensors: list[dict[str, Any]] = []
    blobs: list[bytes] = []
    for name in frame.columns:
        column = frame[name]
        shape = [len(frame), 1]
        if column.dtype.kind == "f":
            blob = column.to_numpy(dtype="<f4").tobytes()
            blobs.append(blob)
            tensors.append(
                {"name": name, "datatype": "FP32", "shape": shape, "parameters": {"binary_data_size": len(blob)}}
            )
        elif column.dtype.kind in "iu":
            tensors.append({"name": name, "datatype": "INT64", "shape": shape, "data": column.tolist()})
        else:
            tensors.append(
                {"name": name, "datatype": "BYTES", "shape": shape, "data": [str(v) for v in column.tolist()]}
            )
    header = json.dumps(
        {"id": "tabular", "inputs": tensors, "outputs": [{"name": "label"}, {"name": "probabilities"}]}
    ).encode()
    return header + b"".join(blobs), len(header)


def infer(frame: pd.DataFrame) -> dict[str, Any]:
    body, header_length = request(frame)
    call = urllib.request.Request(
        f"{URL}/v2/models/penguins/infer",
        data=body,
        method="POST",
        headers={"Content-Type": "application/octet-stream", "Inference-Header-Content-Length": str(header_length)},
    )
    with urllib.request.urlopen(call, timeout=30) as response:
        answer = json.load(response)
    return {o["name"]: o for o in answer["outputs"]} | {"version": answer["model_version"]}


def send_sample(path: Path, times: int) -> None:
    """What production traffic looks like when nothing has changed: the sample itself, row by
    row (the server collects each request for `monitor drift`)."""
    frame = pd.read_parquet(path)
    for _ in range(times):
        for i in range(len(frame)):
            infer(frame.iloc[i : i + 1])
    print(f"sent {len(frame) * times} rows of {path.name} ({times} x {len(frame)})")


def main() -> None:
    if len(sys.argv) > 2:  # predict.py URL sample.parquet N
        wait_ready()
        send_sample(HERE / sys.argv[2], int(sys.argv[3]) if len(sys.argv) > 3 else 1)
        return
    warnings.filterwarnings("ignore", message="X does not have valid feature names")
    holdout = pd.read_parquet(HERE / "holdout.parquet")
    frame = holdout.drop(columns=["species"])
    model = joblib.load(HERE / "model.joblib")  # our own pipeline, trained by train.py
    native_labels, native_proba = model.predict(frame), model.predict_proba(frame)
    lock = yaml.safe_load((HERE / "mlops.lock").read_text())
    parity = lock["models"]["penguins"]["versions"][1]["onnx"]["parity"]
    atol, rtol = parity["atol"], parity["rtol"]
    wait_ready()
    outputs = infer(frame)
    labels = np.asarray(outputs["label"]["data"])
    proba = np.asarray(outputs["probabilities"]["data"], dtype=np.float64).reshape(native_proba.shape)
    error = np.abs(proba - native_proba)
    outside = int(np.sum(error > atol + rtol * np.abs(native_proba)))
    differ = int(np.sum(labels != native_labels.astype(str)))
    for row, label in zip(frame.head(3).to_dict("records"), labels[:3], strict=False):
        print(f"  {row['island']}, {row['sex'] or '(sex unknown)'}, bill {row['bill_length_mm']} mm -> {label}")
    print(
        f"{len(frame)} held-out rows: {differ} labels differ from the native pipeline, max probability "
        f"error {error.max():.3g} (atol {atol:g}, rtol {rtol:g}: {outside} outside)"
    )
    if differ or outside:
        sys.exit("the served answers differ from the native pipeline's predict_proba")
    print(f"penguins@{outputs['version']} answered over the v2 protocol as the native pipeline does")


if __name__ == "__main__":
    main()
