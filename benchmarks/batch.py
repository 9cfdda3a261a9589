"""`mlops-iac score` against bare `session.run`, and its peak memory against input size.

Throughput: the same rows, in the same batches, through the same ONNX model (a RandomForest of
100 trees, depth 10, 20 features, as in the server benchmarks). Bare is `session.run` over
slices of an array already in memory, in one process, with as many onnxruntime threads as
cores, measured twice: with onnxruntime's defaults (pool threads spin between calls) and
without spinning (as `score` runs it); each round's ratio is against the faster of the two.
`score` reads Parquet, converts, runs, and writes Parquet parts with their manifest, with 1
and more lanes (threads with their own session, cores / lanes onnxruntime threads each).

Rounds alternate bare and score. Printed: the ratio of the best figures (on a shared machine
the least disturbed run says most about the code) and the median of the rounds' own ratios
with their range (how noisy the machine was). "start-up" is the wall time of a run whose
scoring takes next to nothing, with the most lanes: its fixed cost (the manifest, the lanes'
sessions, the final fsyncs).

Memory: peak RSS of a process that scores 1x and 10x the rows at 10k-row batches.

    python benchmarks/batch.py [--rows 400000] [--rounds 3] [--memory-rows 100000]
                               [--batches 1000,10000,100000] [--workers 1,2]

On 2 cores two lanes of one thread gain little over one lane of two (0.96-1.12x): each
lane's run covers the other's reading and writing. Scaling with lanes shows where the
cores outnumber one lane's needs.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from mlops_iac.scoring import Settings, prepare, score
from mlops_iac.serving.config import ModelConfig
from mlops_iac.serving.runtime import sha256_of

FEATURES = 20


def make_model(folder: Path) -> Path:
    from skl2onnx import to_onnx
    from sklearn.ensemble import RandomForestClassifier

    rng = np.random.default_rng(0)
    x = rng.normal(size=(5000, FEATURES)).astype(np.float32)
    y = (x[:, 0] + x[:, 1] * x[:, 2] > 0).astype(np.int64)
    model = RandomForestClassifier(100, max_depth=10, random_state=0, n_jobs=1).fit(x, y)
    onx = to_onnx(model, x[:2], options={id(model): {"zipmap": False}}, target_opset=17)
    path = folder / "rf.onnx"
    path.write_bytes(onx.SerializeToString())
    return path


def make_data(path: Path, rows: int) -> None:
    """`rows` rows (an id and 20 float columns) written 100k at a time."""
    rng = np.random.default_rng(1)
    schema = pa.schema([("customer_id", pa.int64())] + [(f"f{i:02d}", pa.float32()) for i in range(FEATURES)])
    with pq.ParquetWriter(path, schema) as writer:
        for start in range(0, rows, 100_000):
            n = min(100_000, rows - start)
            x = rng.normal(size=(n, FEATURES)).astype(np.float32)
            writer.write_table(
                pa.table(
                    [pa.array(np.arange(start, start + n))] + [pa.array(x[:, i]) for i in range(FEATURES)],
                    schema=schema,
                )
            )


def cores() -> int:
    return len(os.sched_getaffinity(0))


def bare(onnx: Path, x: np.ndarray, batch: int, spinning: bool = True) -> float:
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = cores()
    options.inter_op_num_threads = 1
    if not spinning:
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    sess = ort.InferenceSession(str(onnx), options, providers=["CPUExecutionProvider"])
    name = sess.get_inputs()[0].name
    sess.run(None, {name: x[:batch]})
    started = time.perf_counter()
    for i in range(0, len(x), batch):
        sess.run(None, {name: x[i : i + batch]})
    return len(x) / (time.perf_counter() - started)


def scored(model: ModelConfig, data: Path, out: Path, batch: int, workers: int, part_rows: int = 100_000) -> float:
    settings = Settings(batch_size=batch, part_rows=max(batch, part_rows), workers=workers)
    job = prepare(model, data.parent, [str(data)], out, settings)
    started = time.perf_counter()
    summary = score(job)
    seconds = time.perf_counter() - started
    assert summary.rows_out == summary.rows_in
    return summary.rows_in / seconds


def start_up(model: ModelConfig, folder: Path, workers: int) -> float:
    """Seconds of a run whose scoring takes next to nothing: a run's fixed cost."""
    data = folder / "tiny.parquet"
    if not data.exists():
        make_data(data, 2 * workers)
    out = folder / f"start-up-{time.monotonic_ns()}"
    rate = scored(model, data, out, 1, workers, part_rows=1)
    return 2 * workers / rate


def spread(ratios: list[float]) -> str:
    return f"{statistics.median(ratios):.2f} [{min(ratios):.2f}-{max(ratios):.2f}]"


# VmHWM, not ru_maxrss: Linux keeps ru_maxrss across exec, so a child would report the
# benchmark's own peak (the data it holds) instead of its own.
PEAK = """
import json, sys
from pathlib import Path
from mlops_iac.scoring import Settings, prepare, score
from mlops_iac.serving.config import ModelConfig
model = ModelConfig.model_validate_json(sys.argv[1])
job = prepare(model, Path(sys.argv[2]), [sys.argv[3]], Path(sys.argv[4]), Settings(batch_size=10_000))
summary = score(job)
hwm = next(line for line in open("/proc/self/status") if line.startswith("VmHWM:"))
print(json.dumps({"rows": summary.rows_in, "peak_mib": int(hwm.split()[1]) / 1024}))
"""


def peak(model: ModelConfig, folder: Path, data: Path, out: Path) -> dict[str, float]:
    done = subprocess.run(
        [sys.executable, "-c", PEAK, model.model_dump_json(), str(folder), str(data), str(out)],
        check=True,
        capture_output=True,
        text=True,
    )
    return json.loads(done.stdout.strip().splitlines()[-1])  # type: ignore[no-any-return]


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rows", type=int, default=400_000)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--memory-rows", type=int, default=100_000)
    parser.add_argument("--batches", default="1000,10000,100000", help="Batch sizes, comma-separated.")
    parser.add_argument("--workers", default="1,2", help="Lane (--workers) counts, comma-separated.")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        onnx = make_model(folder)
        model = ModelConfig(name="rf", version=1, path=onnx.name, digest=sha256_of(onnx))
        data = folder / "rows.parquet"
        make_data(data, args.rows)
        x = np.stack([c.to_numpy() for c in pq.read_table(data).columns[1:]], axis=1)
        print(f"{args.rows} rows, RandomForest 100 trees depth 10, {FEATURES} features, {cores()} cores")
        counts = sorted({int(w) for w in args.workers.split(",")} | {1})
        print("ratios: best of rounds, then median [range] of each round's own ratio")
        print(f"{'batch':>7} {'bare':>9} {'no spin':>9}  then per worker count: score, /bare, per round, /1w")
        for batch in (int(b) for b in args.batches.split(",")):
            runs: dict[str, list[float]] = {"bare": [], "nospin": [], "start": []}
            for r in range(args.rounds):
                runs["bare"].append(bare(onnx, x, batch))
                runs["nospin"].append(bare(onnx, x, batch, spinning=False))
                for workers in counts:
                    out = folder / f"out-{batch}-{workers}-{r}"
                    runs.setdefault(f"w{workers}", []).append(scored(model, data, out, batch, workers))
                if len(counts) > 1:
                    runs["start"].append(start_up(model, folder, max(counts)))
            base = [max(a, b) for a, b in zip(runs["bare"], runs["nospin"], strict=True)]
            w1 = runs["w1"]
            line = f"{batch:>7} {max(runs['bare']):>9,.0f} {max(runs['nospin']):>9,.0f}"
            for workers in counts:
                w = runs[f"w{workers}"]
                line += (
                    f" | {workers}w {max(w):>9,.0f} {max(w) / max(base):>5.2f} "
                    f"{spread([a / b for a, b in zip(w, base, strict=True)])}"
                )
                if workers > 1:
                    line += f" {max(w) / max(w1):.2f} {spread([a / b for a, b in zip(w, w1, strict=True)])}"
            if runs["start"]:
                line += f" | start-up {statistics.median(runs['start']):.2f}s"
            print(line)
        print("peak RSS of `score` (10k-row batches):")
        sizes = {}
        for factor in (1, 10):
            path = folder / f"mem-{factor}.parquet"
            make_data(path, args.memory_rows * factor)
            sizes[factor] = peak(model, folder, path, folder / f"mem-out-{factor}")
            print(f"  {factor:>2}x: {sizes[factor]['rows']:>9} rows, peak {sizes[factor]['peak_mib']:.0f} MiB")
        print(f"  10x / 1x peak RSS: {sizes[10]['peak_mib'] / sizes[1]['peak_mib']:.2f}")


if __name__ == "__main__":
    main()
