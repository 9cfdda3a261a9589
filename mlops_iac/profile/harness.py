"""Measuring a model in process: latency and throughput over batch sizes and thread counts,
and the peak resident memory of a fresh process that loads and runs it."""

from __future__ import annotations

import json
import os
import platform
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from ..convert.data import Sample, feed, tile_rows

Progress = Callable[[str], None]


def machine(provider: str = "CPUExecutionProvider") -> dict[str, Any]:
    """What the figures were measured on; recorded beside them."""
    import onnxruntime as ort

    cpu = platform.processor() or "unknown"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    usable = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    memory = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") if hasattr(os, "sysconf") else 0
    return {
        "cpu": cpu,
        "cores": usable,
        "memoryBytes": int(memory),
        "python": platform.python_version(),
        "onnxruntime": ort.__version__,
        "provider": provider,
    }


def percentile(samples: list[float], q: float) -> float:
    return float(np.percentile(np.asarray(samples), q))


def grid(
    model: Path,
    sample: Sample,
    batches: tuple[int, ...],
    threads: tuple[int, ...],
    seconds_per_cell: float,
    provider: str = "CPUExecutionProvider",
    progress: Progress | None = None,
) -> list[dict[str, Any]]:
    """Latency percentiles and rows per second for every (batch size, thread count)."""
    import onnxruntime as ort

    cells = []
    for n in threads:
        options = ort.SessionOptions()
        options.intra_op_num_threads = n
        options.inter_op_num_threads = 1
        session = ort.InferenceSession(str(model), options, providers=[provider])
        for batch in batches:
            inputs = feed(session.get_inputs(), tile_rows(sample, batch))
            cells.append(_cell(session, inputs, batch, n, seconds_per_cell))
            if progress:
                progress(f"batch {batch}, {n} thread(s)")
    return cells


def _cell(session: Any, feed: dict[str, np.ndarray], batch: int, threads: int, seconds: float) -> dict[str, Any]:
    for _ in range(5):  # warm-up: first runs allocate
        session.run(None, feed)
    start = time.perf_counter()
    session.run(None, feed)
    once = max(time.perf_counter() - start, 1e-6)
    calls = int(min(max(seconds / 3 / once, 10), 20_000))
    samples: list[float] = []
    medians = []
    for _ in range(3):  # three repeats: their medians show the spread
        repeat = []
        for _ in range(calls):
            t0 = time.perf_counter()
            session.run(None, feed)
            repeat.append(time.perf_counter() - t0)
        medians.append(statistics.median(repeat))
        samples += repeat
    p50 = percentile(samples, 50)
    return {
        "batch": batch,
        "threads": threads,
        "calls": len(samples),
        "p50Ms": round(p50 * 1e3, 4),
        "p95Ms": round(percentile(samples, 95) * 1e3, 4),
        "p99Ms": round(percentile(samples, 99) * 1e3, 4),
        "spreadMs": [round(min(medians) * 1e3, 4), round(max(medians) * 1e3, 4)],
        "rowsPerSecond": round(batch / p50, 1),
    }


_PEAK = """
import json, resource, sys
import numpy as np, onnxruntime as ort
baseline = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
options = ort.SessionOptions(); options.intra_op_num_threads = int(sys.argv[3])
session = ort.InferenceSession(sys.argv[1], options, providers=[sys.argv[4]])
with np.load(sys.argv[2]) as saved:  # strings saved as fixed-width unicode: no pickle
    x = {k: (v.astype(object) if v.dtype.kind == "U" else v) for k, v in saved.items()}
for _ in range(50):
    session.run(None, x)
peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
print(json.dumps({"baselineBytes": baseline * 1024, "peakBytes": peak * 1024}))
"""


def peak_memory(
    model: Path, sample: Sample, batch: int, threads: int, workdir: Path, provider: str = "CPUExecutionProvider"
) -> dict[str, int]:
    """Peak RSS of a fresh process that loads the model and runs the largest batch (measured,
    never derived from the file's size)."""
    import onnxruntime as ort

    data = workdir / "peak-input.npz"
    inputs = ort.InferenceSession(str(model), providers=["CPUExecutionProvider"]).get_inputs()
    arrays = feed(inputs, tile_rows(sample, batch))
    saved: dict[str, Any] = {k: (v.astype(str) if v.dtype == object else v) for k, v in arrays.items()}
    np.savez(data, **saved)
    out = subprocess.run(
        [sys.executable, "-c", _PEAK, str(model), str(data), str(threads), provider],
        capture_output=True,
        text=True,
        timeout=300,
        check=True,
    )
    figures = json.loads(out.stdout.strip().splitlines()[-1])
    figures["modelBytes"] = figures["peakBytes"] - figures["baselineBytes"]
    return {k: int(v) for k, v in figures.items()}
