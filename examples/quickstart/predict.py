"""Ask the served model for a prediction over the v2 protocol, as any client would.

Waits for the server to be ready, sends three iris flowers, prints what comes back.

    python predict.py URL                    # three flowers
    python predict.py URL sample.npy 3       # the model's own sample, three times, row by row
    python predict.py URL --pid SERVER_PID   # stop waiting as soon as that process has exited
"""

from __future__ import annotations

import json
import os
import sys
import time
import urllib.error
import urllib.request

ARGS = sys.argv[1:]
SERVER_PID = int(ARGS.pop(ARGS.index("--pid") + 1)) if "--pid" in ARGS else None
ARGS = [a for a in ARGS if a != "--pid"]
URL = ARGS[0] if ARGS else "http://127.0.0.1:8080"
FLOWERS = [[5.1, 3.5, 1.4, 0.2], [6.0, 2.9, 4.5, 1.5], [6.9, 3.1, 5.4, 2.1]]
SPECIES = ["setosa", "versicolor", "virginica"]


def running(pid: int) -> bool:
    """Whether the process is alive (an exited child not yet reaped counts as gone)."""
    try:
        os.kill(pid, 0)
        with open(f"/proc/{pid}/stat") as stat:
            return stat.read().rsplit(")", 1)[1].split()[0] != "Z"
    except ProcessLookupError:
        return False
    except OSError:  # no /proc (macOS): kill's answer is all there is
        return True


def wait_ready(timeout_s: float = 60) -> None:
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            with urllib.request.urlopen(f"{URL}/v2/health/ready", timeout=1) as response:
                if response.status == 200:
                    return
        except (urllib.error.URLError, OSError):
            pass
        if SERVER_PID is not None and not running(SERVER_PID):
            sys.exit(f"the server (process {SERVER_PID}) exited before it became ready")
        if time.monotonic() > deadline:
            sys.exit(f"the server at {URL} did not become ready")
        time.sleep(0.2)


def infer(rows: list[list[float]]) -> dict:
    body = {
        "inputs": [
            {"name": "input", "datatype": "FP32", "shape": [len(rows), 4], "data": [v for row in rows for v in row]}
        ]
    }
    request = urllib.request.Request(
        f"{URL}/v2/models/iris/infer",
        data=json.dumps(body).encode(),
        headers={"Content-Type": "application/json"},
        method="POST",
    )
    with urllib.request.urlopen(request, timeout=10) as response:
        return json.load(response)


def send_sample(path: str, times: int) -> None:
    """What production traffic looks like when nothing has changed: the sample itself."""
    import numpy as np

    rows = np.load(path).tolist()
    for _ in range(times):
        for row in rows:
            infer([row])
    print(f"sent {len(rows) * times} rows of {path} ({times} x {len(rows)})")


def main() -> None:
    wait_ready()
    if len(ARGS) > 1:
        send_sample(ARGS[1], int(ARGS[2]) if len(ARGS) > 2 else 1)
        return
    answer = infer(FLOWERS)
    outputs = {o["name"]: o for o in answer["outputs"]}
    labels = outputs["label"]["data"]
    for flower, label in zip(FLOWERS, labels, strict=True):
        print(f"  {flower} -> {SPECIES[label]}")
    if labels != [0, 1, 2]:
        sys.exit(f"unexpected predictions: {labels}")
    print(f"iris@{answer['model_version']} answered over the v2 protocol")


if __name__ == "__main__":
    main()
