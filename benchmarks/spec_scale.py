"""Load, validate and plan a generated 500-model, 3-target mlops.yaml.

Prints the median wall time of each phase over repeated runs and the ratio of the whole
against a baseline measured in the same run: PyYAML's `safe_load` of the same text
with libyaml's loader (the least any YAML-based tool must pay). Goal (issue 2): the whole under 1 s.

    python benchmarks/spec_scale.py [--models 500] [--repeat 5]
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import yaml

from mlops_iac.lock import Lock, LockedVersion, write_lock
from mlops_iac.plan import plan
from mlops_iac.resolve import load

TARGETS = {
    "local": {"kind": "local"},
    "edge": {"kind": "docker", "host": "ssh://deploy@edge-01"},
    "prod": {"kind": "kubernetes", "namespace": "models"},
}


def generate(folder: Path, models: int) -> Path:
    (folder / "model.joblib").write_bytes(b"x")
    (folder / "sample.npy").write_bytes(b"x")
    spec = {
        "apiVersion": "mlops-iac/v1",
        "project": {"name": "scale"},
        "models": [
            {
                "name": f"m{i}",
                "framework": "sklearn",
                "source": "model.joblib",
                "sample": "sample.npy",
                "profile": {"p99LatencyMs": 20},
            }
            for i in range(models)
        ],
        "targets": TARGETS,
        "deployments": [
            {
                "model": f"m{i}",
                "target": target,
                **({"versions": [1, 2], "traffic": {1: 90, 2: 10}} if i % 5 == 0 else {"version": 1}),
                "hardware": {"cpu": "500m", "memory": "1Gi"},
            }
            for i in range(models)
            for target in TARGETS
        ],
    }
    lock = Lock()
    for i in range(models):
        for n in (1, 2):
            lock = lock.with_version(
                f"m{i}", n, LockedVersion(digest=f"sha256:{i * 2 + n:064x}", framework="sklearn", size=1)
            )
    write_lock(folder / "mlops.lock", lock)
    file = folder / "mlops.yaml"
    file.write_text(yaml.safe_dump(spec, sort_keys=False))
    return file


def timed(func: object, repeat: int) -> float:
    samples = []
    for _ in range(repeat):
        start = time.perf_counter()
        func()  # type: ignore[operator]
        samples.append(time.perf_counter() - start)
    return statistics.median(samples)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--models", type=int, default=500)
    parser.add_argument("--repeat", type=int, default=5)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        file = generate(Path(tmp), args.models)
        text = file.read_text()
        baseline = timed(lambda: yaml.load(text, Loader=yaml.CSafeLoader), args.repeat)
        load_s = timed(lambda: load(file), args.repeat)
        ws = load(file)
        plan_s = timed(lambda: plan(ws.resolved), args.repeat)
        total = load_s + plan_s
    print(
        f"{args.models} models, {len(TARGETS)} targets, {args.models * len(TARGETS)} deployments, "
        f"{len(text) // 1024} KiB of YAML (+ a lock of {args.models * 2} versions)"
    )
    print(f"  baseline yaml.safe_load        {baseline * 1000:8.1f} ms")
    print(f"  load + validate + resolve      {load_s * 1000:8.1f} ms  ({load_s / baseline:.2f}x baseline)")
    print(f"  plan                           {plan_s * 1000:8.1f} ms")
    print(
        f"  total                          {total * 1000:8.1f} ms  ({total / baseline:.2f}x baseline)"
        f"  goal < 1000 ms: {'met' if total < 1 else 'MISSED'}"
    )


if __name__ == "__main__":
    main()
