"""Ask the served model for a prediction over the v2 protocol, as any client would.

Waits for the server to be ready, sends three iris flowers, prints what comes back.

    python predict.py [URL] [SERVER_PID]

With SERVER_PID, it stops waiting as soon as that process has exited.
"""

from __future__ import annotations

import json
import os
import sys
import time
import urllib.error
import urllib.request

URL = sys.argv[1] if len(sys.argv) > 1 else "http://127.0.0.1:8080"
SERVER_PID = int(sys.argv[2]) if len(sys.argv) > 2 else None
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
        if SERVER_PID is not None and not running(SERVER_PID):
            sys.exit(f"the server (process {SERVER_PID}) exited before it became ready")
        try:
            with urllib.request.urlopen(f"{URL}/v2/health/ready", timeout=1) as response:
                if response.status == 200:
                    return
        except (urllib.error.URLError, OSError):
            pass
        if time.monotonic() > deadline:
            sys.exit(f"the server at {URL} did not become ready")
        time.sleep(0.2)


def main() -> None:
    wait_ready()
    body = {"id": "quickstart", "inputs": [
        {"name": "input", "datatype": "FP32", "shape": [len(FLOWERS), 4], "data": [v for f in FLOWERS for v in f]}]}
    request = urllib.request.Request(f"{URL}/v2/models/iris/infer", data=json.dumps(body).encode(),
                                     headers={"Content-Type": "application/json"}, method="POST")
    with urllib.request.urlopen(request, timeout=10) as response:
        answer = json.load(response)
    outputs = {o["name"]: o for o in answer["outputs"]}
    labels = outputs["label"]["data"]
    for flower, label in zip(FLOWERS, labels, strict=True):
        print(f"  {flower} -> {SPECIES[label]}")
    if labels != [0, 1, 2]:
        sys.exit(f"unexpected predictions: {labels}")
    print(f"iris@{answer['model_version']} answered over the v2 protocol")


if __name__ == "__main__":
    main()
