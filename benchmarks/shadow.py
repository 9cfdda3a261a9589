"""The cost of shadow traffic to the primary's answers: the same server and model with and
without a shadow version mirrored in-process, side by side in one run, alternated rounds.

    python benchmarks/shadow.py [--requests 2000] [--rounds 5] [--percent 20] [--model iris|rf] [--remote]

Each round sends the same requests, one at a time over one keep-alive connection (concurrency
1: where an added cost shows most), to a server without a shadow and to one that mirrors
`--percent` of them to a second version (recording both answers to a file), and measures each
answer's latency at the client. Prints p50 and p99 per round and the median ratio of the p50s
(with mirroring over without); the issue's goal is at most 1.10. With `--remote` the shadow
is a third server the mirrored one sends its share to over HTTP (`mirrors`), as a Docker
target's served container does to the shadow's container.
"""

from __future__ import annotations

import argparse
import http.client
import json
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).parent))
from serving import build_model

from mlops_iac.profile.load import free_port, wait_ready
from mlops_iac.serving.runtime import sha256_of


@contextmanager
def server(folder: Path, name: str, config: dict[str, object]) -> Iterator[int]:
    settings = folder / f"{name}.json"
    settings.write_text(json.dumps(config))
    port = free_port()
    process = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "mlops_iac.serving",
            "--config",
            str(settings),
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        wait_ready(f"http://127.0.0.1:{port}/v2/health/ready", process)
        yield port
    finally:
        process.send_signal(signal.SIGTERM)
        process.wait(30)


def drive(port: int, bodies: list[bytes]) -> list[float]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    times = []
    for body in bodies:
        began = time.perf_counter()
        conn.request("POST", "/v2/models/m/infer", body, {"Content-Type": "application/json"})
        response = conn.getresponse()
        response.read()
        times.append(time.perf_counter() - began)
        assert response.status == 200
    conn.close()
    return times


def p(values: list[float], q: float) -> float:
    return float(np.percentile(values, q)) * 1e6


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--requests", type=int, default=2000)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--percent", type=int, default=20)
    parser.add_argument("--model", choices=["iris", "rf"], default="iris")
    parser.add_argument("--remote", action="store_true", help="mirror over HTTP to a third server")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        path, x = build_model(args.model, folder)
        entry = {"name": "m", "path": path.name, "digest": sha256_of(path)}
        plain = {"deployment": "plain", "models": [{**entry, "version": 1}]}
        collection = {"enabled": True, "sample_rate": 0.0, "sink": "file", "path": "collected/shadow.jsonl"}
        mirrored = {
            "deployment": "mirrored",
            "models": [{**entry, "version": 1}, {**entry, "version": 2, "weight": 0, "shadow": args.percent}],
            "collection": collection,
        }
        bodies = [
            json.dumps(
                {
                    "id": f"r{i}",
                    "inputs": [
                        {"name": "input", "datatype": "FP32", "shape": [1, x.shape[1]], "data": x[i % len(x)].tolist()}
                    ],
                }
            ).encode()
            for i in range(args.requests)
        ]
        ratios = []
        with ExitStack() as servers:
            a = servers.enter_context(server(folder, "plain", plain))
            if args.remote:
                shadow = {"deployment": "shadow", "models": [{**entry, "version": 2}]}
                shadow_port = servers.enter_context(server(folder, "shadow", shadow))
                url = f"http://127.0.0.1:{shadow_port}"
                mirror = {"model": "m", "version": 2, "percent": args.percent, "url": url}
                mirrored = {**plain, "deployment": "mirrored", "collection": collection, "mirrors": [mirror]}
            b = servers.enter_context(server(folder, "mirrored", mirrored))
            drive(a, bodies[:200])  # warm both
            drive(b, bodies[:200])
            where = "over HTTP to another server" if args.remote else "in process"
            print(
                f"{args.model}, {args.requests} requests per round at concurrency 1, {args.percent}% mirrored {where}"
            )
            print("round | without p50 us | p99 us | with p50 us | p99 us | p50 ratio")
            for n in range(args.rounds):
                order = [(a, "without"), (b, "with")] if n % 2 == 0 else [(b, "with"), (a, "without")]
                got = {label: drive(port, bodies) for port, label in order}
                ratio = p(got["with"], 50) / p(got["without"], 50)
                ratios.append(ratio)
                print(
                    f"{n + 1} | {p(got['without'], 50):.0f} | {p(got['without'], 99):.0f} | "
                    f"{p(got['with'], 50):.0f} | {p(got['with'], 99):.0f} | {ratio:.3f}"
                )
        lines = (folder / "collected/shadow.jsonl").read_text().splitlines()
        shadows = sum(1 for line in lines if '"shadow":true' in line)
        sent = args.requests * args.rounds + 200
        print(f"median p50 ratio, with mirroring over without: {statistics.median(ratios):.3f} (goal: at most 1.10)")
        print(f"mirrored: {shadows} of {sent} requests = {shadows / sent:.2%} (configured {args.percent}%)")


if __name__ == "__main__":
    main()
