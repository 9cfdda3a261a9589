"""gRPC beside REST on one mlops-iac server: the same model, the same process, the same run.

    python benchmarks/serving_grpc.py [--seconds 3] [--rounds 3] [--model rf|mlp|iris]

Drives the server's REST port and its gRPC port alike: tritonclient's asyncio clients
(`tritonclient.http.aio` with its default binary tensors, `tritonclient.grpc.aio`), C requests
in flight at concurrency 1, 8 and 32, interleaved rounds (REST, gRPC, REST, gRPC, ...) so the
machine's noise hits both. Prints requests per second, p50 and p99, and the server's CPU time
per request (from /proc, so it does not depend on how fast the Python client is), and the
gRPC-over-REST ratios. benchmarks/serving.py measures REST against other servers with wrk.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from mlops_iac.profile.load import free_port, wait_ready

sys.path.insert(0, str(Path(__file__).parent))
from serving import CONCURRENCY, build_model  # the same models as the REST benchmark

TICKS = os.sysconf("SC_CLK_TCK")


@dataclass
class Run:
    rps: float
    p50_us: float
    p99_us: float
    cpu_us: float  # server CPU time per request


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICKS  # utime + stime


async def drive(kind: str, url: str, row: np.ndarray, concurrency: int, seconds: float, pid: int) -> Run:
    if kind == "gRPC":
        import tritonclient.grpc.aio as client_module
    else:
        import tritonclient.http.aio as client_module  # type: ignore[no-redef]
    client: Any = client_module.InferenceServerClient(url)
    tensor = client_module.InferInput("input", list(row.shape), "FP32")
    tensor.set_data_from_numpy(row)
    latencies: list[int] = []
    stop_at = 0.0

    async def worker() -> None:
        while time.perf_counter() < stop_at:
            started = time.perf_counter_ns()
            await client.infer("m", [tensor])
            latencies.append(time.perf_counter_ns() - started)

    stop_at = time.perf_counter() + 0.3
    await asyncio.gather(*(worker() for _ in range(concurrency)))  # warm the connections
    latencies.clear()
    cpu, started = cpu_seconds(pid), time.perf_counter()
    stop_at = started + seconds
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    elapsed, used = time.perf_counter() - started, cpu_seconds(pid) - cpu
    await client.close()
    ordered = sorted(latencies)
    return Run(
        len(ordered) / elapsed,
        ordered[len(ordered) // 2] / 1000,
        ordered[int(len(ordered) * 0.99)] / 1000,
        used / len(ordered) * 1e6,
    )


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--seconds", type=float, default=3, help="seconds per run")
    parser.add_argument("--rounds", type=int, default=3, help="interleaved rounds; medians are reported")
    parser.add_argument("--model", choices=["rf", "mlp", "iris"], default="rf")
    args = parser.parse_args()
    folder = Path(tempfile.mkdtemp(prefix="mlops-bench-grpc-"))
    _, x = build_model(args.model, folder)
    http, grpc = free_port(), free_port()
    (folder / "server.json").write_text(
        json.dumps({"models": [{"name": "m", "version": 1, "path": "model.onnx"}], "grpc_port": grpc})
    )
    with open(folder / "server.log", "wb") as log:
        server = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "mlops_iac.serving",
                "--config",
                str(folder / "server.json"),
                "--host",
                "127.0.0.1",
                "--port",
                str(http),
            ],
            stdout=log,
            stderr=subprocess.STDOUT,
        )
    runs: dict[tuple[str, int], list[Run]] = {}
    try:
        wait_ready(f"http://127.0.0.1:{http}/v2/health/ready", server)
        urls = {"REST": f"127.0.0.1:{http}", "gRPC": f"127.0.0.1:{grpc}"}
        for _ in range(args.rounds):
            for c in CONCURRENCY:
                for kind, url in urls.items():
                    run = asyncio.run(drive(kind, url, x[:1], c, args.seconds, server.pid))
                    runs.setdefault((kind, c), []).append(run)
    finally:
        server.send_signal(signal.SIGTERM)
        server.wait(30)
    report(
        {
            key: Run(*(statistics.median(getattr(r, f) for r in rs) for f in ("rps", "p50_us", "p99_us", "cpu_us")))
            for key, rs in runs.items()
        }
    )


def report(runs: dict[tuple[str, int], Run]) -> None:
    print(
        f"{'protocol':8} {'conc':>4} {'req/s':>9} {'p50 us':>9} {'p99 us':>9} {'server CPU us/req':>18}"
        "   (medians of interleaved rounds; one Python client process)"
    )
    for (kind, c), r in sorted(runs.items(), key=lambda item: (item[0][1], item[0][0])):
        print(f"{kind:8} {c:>4} {r.rps:>9,.0f} {r.p50_us:>9.0f} {r.p99_us:>9.0f} {r.cpu_us:>18.0f}")
    print("gRPC over REST:")
    for c in CONCURRENCY:
        g, h = runs[("gRPC", c)], runs[("REST", c)]
        print(
            f"  concurrency {c:>2}: requests/s {g.rps / h.rps:.2f}x, p99 {g.p99_us / h.p99_us:.2f}x, "
            f"server CPU per request {g.cpu_us / h.cpu_us:.2f}x"
        )


if __name__ == "__main__":
    main()
