"""Does the recommendation hold? Run the server on exactly what was recommended and drive it
at the target rate.

    python benchmarks/profile_check.py [-f examples/quickstart/mlops.yaml] [--model iris@1]
                                       [--seconds 20] [--rate R]

Reads the recommendation and the profile settings from mlops.lock and mlops.yaml (run the
quickstart and `mlops-iac profile` first), starts the server pinned with taskset to the
cores the CPU limit spans, inside cgroup v1 groups holding the recommended CPU limit (CFS
quota) and memory limit, and sends requests open-loop at the target rate per replica:
each request has a scheduled send time, and its latency is measured from that time, so a
stalled server cannot hide its queue (no coordinated omission). Prints p50/p99 against the
objective, the server's peak memory against its limit, and whether the cgroup throttled it.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import os
import re
import subprocess
import sys
import tempfile
import time
import urllib.request
from contextlib import contextmanager
from pathlib import Path

import numpy as np

from mlops_iac.cli_registry import project_registry
from mlops_iac.convert.data import read_features
from mlops_iac.profile.load import free_port, peak_rss, request_body
from mlops_iac.registry import parse_ref

CGROUP = Path("/sys/fs/cgroup")


@contextmanager
def cgroups(name: str, cpu_millis: int, memory_bytes: int):  # type: ignore[no-untyped-def]
    """cgroup v1 cpu and memory groups with the limits; yields a function that adds a pid."""
    made = []
    try:
        cpu, mem = CGROUP / "cpu" / name, CGROUP / "memory" / name
        cpu.mkdir()
        made.append(cpu)
        period = int((cpu / "cpu.cfs_period_us").read_text())
        (cpu / "cpu.cfs_quota_us").write_text(str(int(period * cpu_millis / 1000)))
        mem.mkdir()
        made.append(mem)
        (mem / "memory.limit_in_bytes").write_text(str(memory_bytes))

        def add(pid: int) -> None:
            (cpu / "cgroup.procs").write_text(str(pid))
            (mem / "cgroup.procs").write_text(str(pid))

        yield add, cpu, mem
    finally:
        for folder in reversed(made):
            for _ in range(50):
                try:
                    folder.rmdir()
                    break
                except OSError:
                    time.sleep(0.1)


async def paced(port: int, body: bytes, rate: float, seconds: float, connections: int) -> list[float]:
    """Open-loop load: request i is due at start + i / rate; latency counts from then."""
    request = (
        b"POST /v2/models/m/infer HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
        + f"Content-Length: {len(body)}\r\n\r\n".encode()
        + body
    )
    total = int(rate * seconds)
    start = time.perf_counter() + 0.2
    latencies: list[float] = []
    queue: asyncio.Queue[float] = asyncio.Queue()
    for i in range(total):
        queue.put_nowait(start + i / rate)

    async def connection() -> None:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        try:
            while not queue.empty():
                due = queue.get_nowait()
                await asyncio.sleep(max(0.0, due - time.perf_counter()))
                writer.write(request)
                head = await reader.readuntil(b"\r\n\r\n")
                length = int(re.search(rb"(?i)content-length: (\d+)", head).group(1))  # type: ignore[union-attr]
                await reader.readexactly(length)
                if not head.startswith(b"HTTP/1.1 200"):
                    raise RuntimeError(head.decode(errors="replace"))
                latencies.append(time.perf_counter() - due)
        finally:
            writer.close()

    await asyncio.gather(*(connection() for _ in range(connections)))
    return latencies


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("-f", "--file", type=Path, default=Path("examples/quickstart/mlops.yaml"))
    parser.add_argument("--model", default=None, help="MODEL@N (default: the first deployed version)")
    parser.add_argument("--seconds", type=float, default=20)
    parser.add_argument("--rate", type=float, default=None, help="requests/s (default: targetRps per replica)")
    args = parser.parse_args()
    registry, ws = project_registry(args.file)
    assert ws is not None
    dep = ws.resolved.deployments[0]
    ref = parse_ref(args.model or f"{dep.model}@{dep.versions[0].number}")
    version = registry.resolve(ref)
    facts = ws.lock.version(version.model, version.version)
    if facts is None or facts.recommendation is None:
        sys.exit(f"no recommendation for {ref} in mlops.lock: run `mlops-iac profile {ref}` first")
    rec = facts.recommendation
    spec = ws.resolved.model(version.model)
    slo = spec.profile.p99_latency_ms
    rate = args.rate or (spec.profile.target_rps or (rec.capacity_rps or 100) * 0.7) / rec.replicas_min
    cpu_limit = rec.cpu_limit_millis or 2 * rec.cpu_millis
    memory_limit = rec.memory_limit_bytes or rec.memory_bytes
    cores = max(1, math.ceil(cpu_limit / 1000))
    sample = read_features(ws.root / (spec.sample or ""))
    with tempfile.TemporaryDirectory() as tmp:
        model = Path(tmp) / "model.onnx"
        registry.pull(ref, model, "onnx")
        settings = Path(tmp) / "server.json"
        settings.write_text(
            json.dumps(
                {
                    "models": [
                        {
                            "name": "m",
                            "version": 1,
                            "path": "model.onnx",
                            "threads": rec.threads,
                            "max_batch_size": rec.max_batch_size,
                            "max_delay_ms": rec.max_delay_ms,
                        }
                    ]
                }
            )
        )
        port = free_port()
        name = f"mlops-check-{os.getpid()}"
        with cgroups(name, cpu_limit, memory_limit) as (add, cpu_group, _):
            process = subprocess.Popen(
                [
                    "taskset",
                    "-c",
                    ",".join(str(c) for c in range(cores)),
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
            add(process.pid)  # before it imports anything: the whole life of the server is limited
            try:
                deadline = time.monotonic() + 60
                while True:
                    try:
                        with urllib.request.urlopen(f"http://127.0.0.1:{port}/v2/health/ready", timeout=1) as r:
                            if r.status == 200:
                                break
                    except OSError:
                        if time.monotonic() > deadline or process.poll() is not None:
                            sys.exit("the server did not start inside the limits")
                        time.sleep(0.1)
                throttled_before = _throttled(cpu_group)
                latencies = asyncio.run(
                    paced(
                        port, request_body(sample), rate, args.seconds, connections=max(4, int(rate * slo / 1000) + 2)
                    )
                )
                throttled = _throttled(cpu_group) - throttled_before
                peak = peak_rss(process.pid)
            finally:
                process.terminate()
                process.wait(30)
    p50, p99 = (float(np.percentile(latencies, q)) * 1000 for q in (50, 99))
    print(
        f"{ref}: cpu limit {cpu_limit}m (request {rec.cpu_millis}m) on {cores} core(s), memory limit "
        f"{memory_limit // 2**20} MiB, threads {rec.threads}, batching "
        f"{'max ' + str(rec.max_batch_size) if rec.max_batch_size > 1 else 'off'}"
    )
    print(f"driven open-loop at {rate:g} requests/s for {args.seconds:g} s: {len(latencies)} requests")
    print(
        f"p50 {p50:.2f} ms, p99 {p99:.2f} ms against the objective {slo:g} ms: "
        f"{'HOLDS' if p99 <= slo else 'MISSED'} ({p99 / slo:.2f} of the objective)"
    )
    print(
        f"peak memory {peak / 2**20:.0f} MiB of the {memory_limit // 2**20} MiB limit; CFS throttled periods "
        f"during the run: {throttled}"
    )


def _throttled(group: Path) -> int:
    for line in (group / "cpu.stat").read_text().splitlines():
        if line.startswith("nr_throttled"):
            return int(line.split()[1])
    return 0


if __name__ == "__main__":
    main()
