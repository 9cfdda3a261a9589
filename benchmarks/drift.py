"""Records per second of the drift check on one core, against reading the same file.

    taskset -c 0 python benchmarks/drift.py [--records 1000000]

Side by side with another version of the code: run this same file with PYTHONPATH set to
that version's checkout (it falls back to a check without the model filter).

Writes a file of collected JSON lines (iris-shaped: 4 inputs, a label and 3 probabilities
per record), then times (a) reading and parsing every line with orjson (the least any
check must pay) and (b) the whole drift check, and prints records per second, the ratio,
and the peak memory of the check (streaming: it does not grow with the file).
"""

from __future__ import annotations

import argparse
import os
import resource
import tempfile
import time
from pathlib import Path

import numpy as np
import orjson
from sklearn.datasets import load_iris

from mlops_iac.monitoring.baseline import baseline
from mlops_iac.monitoring.drift import check


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--records", type=int, default=1_000_000)
    args = parser.parse_args()
    if hasattr(os, "sched_setaffinity"):
        os.sched_setaffinity(0, {min(os.sched_getaffinity(0))})  # one core
    features = load_iris(return_X_y=True)[0].astype(np.float32)
    probabilities = np.full((len(features), 3), 1 / 3, dtype=np.float32)
    labels = np.repeat(np.arange(3, dtype=np.int64), 50)
    base = baseline(features, {"label": labels, "probabilities": probabilities})
    rng = np.random.default_rng(0)
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "collected.jsonl"
        with open(path, "wb") as out:
            rows = features[rng.integers(0, len(features), args.records)]
            for row in rows:
                out.write(
                    orjson.dumps(
                        {
                            "model": "iris",
                            "version": "1",
                            "inputs": {"input": [row.tolist()]},
                            "outputs": {"label": [0], "probabilities": [[0.3, 0.3, 0.4]]},
                        }
                    )
                    + b"\n"
                )
        size = path.stat().st_size
        start, cpu = time.perf_counter(), time.process_time()
        with open(path, "rb") as handle:
            for line in handle:
                orjson.loads(line)
        parse, parse_cpu = time.perf_counter() - start, time.process_time() - cpu
        before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        start, cpu = time.perf_counter(), time.process_time()
        try:  # as `monitor drift` calls it: only the records of the version checked
            results, records = check(base, [path], threshold=0.2, model="iris", version=1)
        except TypeError:  # an older check without the filter, for a side-by-side run
            results, records = check(base, [path], threshold=0.2)
        elapsed, elapsed_cpu = time.perf_counter() - start, time.process_time() - cpu
        after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    print(f"{records:,} records ({size / 2**20:.0f} MiB of JSON lines), {len(results)} columns, one core")
    print(f"  read + parse only (baseline)  {records / parse:>10,.0f} records/s")
    print(
        f"  drift check (PSI + KS)        {records / elapsed:>10,.0f} records/s  "
        f"({elapsed / parse:.2f}x the parse time)"
    )
    # CPU seconds of this process: what the check costs, whatever else shares the core.
    print(f"  per CPU second: parse {records / parse_cpu:,.0f}, check {records / elapsed_cpu:,.0f} records")
    print(f"  peak RSS before/after the check: {before / 1024:.0f} / {after / 1024:.0f} MiB")


if __name__ == "__main__":
    main()
