"""Drift on real data that scikit-learn ships: a shifted copy drifts, a fresh sample does not."""

from __future__ import annotations

import json
import tracemalloc
from pathlib import Path

import numpy as np
from click.testing import CliRunner
from sklearn.datasets import load_breast_cancer

from mlops_iac.cli import main
from mlops_iac.monitoring.drift import baseline, check, psi


def collected(path: Path, features: np.ndarray, rows_per_record: int = 1, labels: bool = True) -> Path:
    with open(path, "w") as out:
        for i in range(0, len(features), rows_per_record):
            chunk = features[i: i + rows_per_record]
            record = {"model": "m", "inputs": {"input": chunk.tolist()}}
            if labels:
                record["outputs"] = {"label": [0] * len(chunk)}
            out.write(json.dumps(record) + "\n")
    return path


def split() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    features = load_breast_cancer(return_X_y=True)[0].astype(np.float32)
    order = np.random.default_rng(0).permutation(len(features))
    return features[order[:280]], features[order[280:]], features


def test_a_shifted_copy_drifts_and_a_fresh_sample_does_not(tmp_path: Path) -> None:
    reference, fresh, _ = split()
    base = baseline(reference, {"label": np.zeros(len(reference))})
    same, records = check(base, [collected(tmp_path / "same.jsonl", fresh)], threshold=0.2)
    assert records == len(fresh)
    assert not any(r.drifted for r in same), [(r.name, r.psi) for r in same if r.drifted]
    shifted = fresh.copy()
    shifted[:, [0, 2, 3]] *= 1.4  # radius, perimeter and area of the tumours: 40% larger
    moved, _ = check(base, [collected(tmp_path / "shifted.jsonl", shifted, rows_per_record=3)], threshold=0.2)
    drifted = {r.name for r in moved if r.drifted}
    assert {"input[0]", "input[2]", "input[3]"} <= drifted
    assert len(drifted) <= 6  # the untouched columns stay calm
    by_name = {r.name: r for r in moved}
    assert by_name["input[0]"].ks > 0.3 and by_name["input[0]"].ks_pvalue < 1e-6
    assert by_name["input[5]"].psi < 0.2


def test_psi_of_equal_distributions_is_zero() -> None:
    counts = np.asarray([10.0, 20.0, 30.0])
    assert psi(counts, counts * 7) == 0.0
    assert psi(counts, counts[::-1]) > 0.5


def test_streaming_holds_no_more_than_bins_and_reservoirs(tmp_path: Path) -> None:
    reference, _, features = split()
    base = baseline(reference, {})
    rows = np.tile(features, (200, 1))  # 113,800 records
    path = collected(tmp_path / "big.jsonl", rows)
    tracemalloc.start()
    results, records = check(base, [path], threshold=0.2)
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    assert records == len(rows)
    size = path.stat().st_size
    assert peak < size / 3, f"{peak / 2**20:.0f} MiB peak for a {size / 2**20:.0f} MiB file of {records} records"
    assert all(r.count == len(rows) for r in results)


def test_cli_exits_3_on_drift_and_writes_a_report(converted: Path) -> None:
    sample = np.load(converted / "sample.npy")
    calm = collected(converted / "calm.jsonl", np.tile(sample, (4, 1)), labels=False)
    runner = CliRunner()
    ok = runner.invoke(main, ["monitor", "drift", "iris@1", "--collected", str(calm)])
    assert ok.exit_code == 0, ok.output
    moved = sample.copy()
    moved[:, 2] += 2.0  # petal length, 2 cm longer
    shifted = collected(converted / "shifted.jsonl", np.tile(moved, (4, 1)), labels=False)
    result = runner.invoke(main, ["monitor", "drift", "iris@1", "--collected", str(shifted), "--report", "drift"])
    assert result.exit_code == 3, result.output
    assert "input[2]" in result.output and "DRIFT" in result.output
    assert (converted / "drift/psi.png").read_bytes().startswith(b"\x89PNG")
    assert "**drift**" in (converted / "drift/report.md").read_text()
