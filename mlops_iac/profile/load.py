"""The load test of a candidate: the real server over HTTP on 127.0.0.1.

The server runs as its own process (as in the image), with and without dynamic batching;
we drive it at each concurrency level and read, beside requests per second and latency,
the CPU it used (from /proc) and its peak resident memory. wrk drives the load when it is
installed (it costs the shared cores least); otherwise an asyncio client does.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from ..convert.data import Sample, complete_rows, rows_of, v2_tensors
from ..errors import MlopsIacError
from .harness import percentile


class ProfileError(MlopsIacError):
    """The load test could not run or its tool answered in a way we cannot read."""


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@contextmanager
def server(model: Path, threads: int, batch: int, workdir: Path):  # type: ignore[no-untyped-def]
    """A running server process for `model`; yields (port, pid)."""
    settings = workdir / f"profile-server-{batch}.json"
    settings.write_text(
        json.dumps(
            {
                "models": [
                    {
                        "name": "m",
                        "version": 1,
                        "path": str(model.resolve()),
                        "threads": threads,
                        "max_batch_size": batch,
                        "max_delay_ms": 0,
                    }
                ],
                "metrics": True,
            }
        )
    )
    port = free_port()
    log = open(workdir / f"server-{batch}.log", "wb")  # noqa: SIM115 - closed below
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
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    try:
        wait_ready(f"http://127.0.0.1:{port}/v2/health/ready", process)
        yield port, process.pid
    finally:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(30)
        except subprocess.TimeoutExpired:
            process.kill()
        log.close()


def wait_ready(url: str, process: subprocess.Popen[bytes], timeout: float = 120) -> None:
    """Until `url` answers 200; fails at once when the server process has exited."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise ProfileError(f"the server for {url} exited with {process.returncode} before it was ready")
        try:
            with urllib.request.urlopen(url, timeout=1) as r:  # noqa: S310 - our own http://127.0.0.1 URLs
                if r.status == 200:
                    return
        except OSError:
            time.sleep(0.05)
    raise TimeoutError("the server did not become ready")


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def peak_rss(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024
    return 0


def request_body(sample: Sample, inputs: list[Any] | None = None) -> bytes:
    """A v2 request for the sample's first row: one tensor per model input (per column for a
    DataFrame pipeline)."""
    if inputs is None:  # a single matrix named "input"
        from types import SimpleNamespace

        inputs = [SimpleNamespace(name="input", type="tensor(float)", shape=[None, None])]
    rows = complete_rows(sample)  # JSON has no NaN
    return json.dumps({"inputs": v2_tensors(inputs, rows_of(rows if len(rows) else sample, slice(0, 1)))}).encode()


def model_body(model: Path, sample: Sample) -> bytes:
    """One request in the model's own terms: its inputs' names and datatypes (a model brought
    as ONNX need not call its input `input`), one tensor per column for a DataFrame pipeline."""
    import onnxruntime as ort

    return request_body(sample, ort.InferenceSession(str(model), providers=["CPUExecutionProvider"]).get_inputs())


def check_answer(port: int, body: bytes) -> None:
    """A load test of error answers measures nothing: the first request must succeed."""
    request = urllib.request.Request(
        f"http://127.0.0.1:{port}/v2/models/m/infer", data=body, headers={"Content-Type": "application/json"}
    )
    try:
        with urllib.request.urlopen(request, timeout=30):  # noqa: S310 - our own http://127.0.0.1 URL
            return
    except urllib.error.HTTPError as exc:
        raise ProfileError(
            f"the model server refused the profiling request ({exc.code}): {exc.read().decode(errors='replace')[:500]}"
        ) from None


def drive(port: int, pid: int, body: bytes, concurrency: int, seconds: float) -> dict[str, Any]:
    """Load at `concurrency` for `seconds`: rps, latency percentiles, cores and memory used."""
    before, start = cpu_seconds(pid), time.perf_counter()
    if shutil.which("wrk"):
        figures = _wrk(port, body, concurrency, seconds)
    else:
        figures = asyncio.run(_asyncio_load(port, body, concurrency, seconds))
    elapsed = time.perf_counter() - start
    figures["cpuCores"] = round((cpu_seconds(pid) - before) / elapsed, 3)
    figures["peakRssBytes"] = peak_rss(pid)
    figures["concurrency"] = concurrency
    return figures


def _wrk(port: int, body: bytes, concurrency: int, seconds: float) -> dict[str, Any]:
    with tempfile.NamedTemporaryFile("w", suffix=".lua", delete=False) as script:
        script.write(
            'wrk.method = "POST"\nwrk.headers["Content-Type"] = "application/json"\n'
            f"wrk.body = {json.dumps(body.decode())}\n"
        )
    try:
        out = subprocess.run(
            [
                "wrk",
                "-t1",
                f"-c{concurrency}",
                f"-d{max(1, round(seconds))}s",
                "--latency",
                "-s",
                script.name,
                f"http://127.0.0.1:{port}/v2/models/m/infer",
            ],
            capture_output=True,
            text=True,
            check=True,
            timeout=seconds + 60,
        ).stdout
    finally:
        os.unlink(script.name)
    errors = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    return {
        "rps": float(_find(r"Requests/sec:\s+([\d.]+)", out)),
        "p50Ms": _ms(out, "50%"),
        "p99Ms": _ms(out, "99%"),
        "errors": int(errors.group(1)) if errors else 0,
        "driver": "wrk",
    }


def _find(pattern: str, text: str) -> str:
    match = re.search(pattern, text)
    if match is None:
        raise ProfileError(f"unexpected wrk output:\n{text}")
    return match.group(1)


def _ms(text: str, which: str) -> float:
    match = re.search(rf"{which}\s+([\d.]+)(us|ms|s)\b", text)
    if match is None:
        raise ProfileError(f"unexpected wrk output:\n{text}")
    return round(float(match.group(1)) * {"us": 1e-3, "ms": 1.0, "s": 1e3}[match.group(2)], 4)


async def _asyncio_load(port: int, body: bytes, concurrency: int, seconds: float) -> dict[str, Any]:
    request = (
        b"POST /v2/models/m/infer HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
        + f"Content-Length: {len(body)}\r\n\r\n".encode()
        + body
    )
    latencies: list[float] = []
    errors = [0]
    deadline = time.perf_counter() + seconds

    async def worker() -> None:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        try:
            while time.perf_counter() < deadline:
                t0 = time.perf_counter()
                writer.write(request)
                head = await reader.readuntil(b"\r\n\r\n")
                length = int(re.search(rb"(?i)content-length: (\d+)", head).group(1))  # type: ignore[union-attr]
                await reader.readexactly(length)
                latencies.append(time.perf_counter() - t0)
                if not head.startswith(b"HTTP/1.1 200"):
                    errors[0] += 1
        finally:
            writer.close()

    started = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    elapsed = time.perf_counter() - started
    return {
        "rps": round(len(latencies) / elapsed, 1),
        "p50Ms": round(percentile(latencies, 50) * 1e3, 4),
        "p99Ms": round(percentile(latencies, 99) * 1e3, 4),
        "errors": errors[0],
        "driver": "asyncio",
    }


def load_test(
    model: Path,
    sample: Sample,
    threads: int,
    concurrency: tuple[int, ...],
    max_batch: int,
    seconds: float,
    workdir: Path,
    progress: Callable[[str], None] | None = None,
) -> list[dict[str, Any]]:
    """Every concurrency level, without and (when it can merge requests) with dynamic batching."""
    body = model_body(model, sample)
    results = []
    for batching in (False, True) if max_batch > 1 else (False,):
        with server(model, threads, max_batch if batching else 1, workdir) as (port, pid):
            check_answer(port, body)
            drive(port, pid, body, max(concurrency), min(1.0, seconds))  # warm-up
            for level in concurrency:
                figures = drive(port, pid, body, level, seconds)
                figures["batching"] = batching
                results.append(figures)
                if progress:
                    progress(f"HTTP, concurrency {level}, batching {'on' if batching else 'off'}")
    return results
