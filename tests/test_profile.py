"""Right-sizing on recorded figures (pure: no timing), and one real quick profile."""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

from click.testing import CliRunner

from mlops_iac.cli import main
from mlops_iac.lock import read_lock
from mlops_iac.profile import plan
from mlops_iac.profile.recommend import choose_threads, recommend
from mlops_iac.profile.report import LIMIT, markdown

RECORDED: dict[str, Any] = {
    "machine": {
        "cpu": "AMD EPYC",
        "cores": 2,
        "memoryBytes": 24 * 2**30,
        "onnxruntime": "1.32.0",
        "provider": "CPUExecutionProvider",
        "python": "3.11.7",
    },
    "quick": False,
    "inProcess": [
        {
            "batch": 1,
            "threads": 1,
            "calls": 900,
            "p50Ms": 0.15,
            "p95Ms": 0.2,
            "p99Ms": 0.3,
            "spreadMs": [0.14, 0.16],
            "rowsPerSecond": 6600.0,
        },
        {
            "batch": 32,
            "threads": 1,
            "calls": 300,
            "p50Ms": 1.1,
            "p95Ms": 1.3,
            "p99Ms": 1.5,
            "spreadMs": [1.0, 1.2],
            "rowsPerSecond": 29000.0,
        },
        {
            "batch": 1,
            "threads": 2,
            "calls": 900,
            "p50Ms": 0.12,
            "p95Ms": 0.18,
            "p99Ms": 0.28,
            "spreadMs": [0.11, 0.13],
            "rowsPerSecond": 8300.0,
        },
    ],
    "memory": {"baselineBytes": 52 * 2**20, "peakBytes": 90 * 2**20, "modelBytes": 38 * 2**20},
    "http": [
        {
            "batching": False,
            "concurrency": 1,
            "rps": 2600.0,
            "p50Ms": 0.37,
            "p99Ms": 0.5,
            "cpuCores": 0.9,
            "peakRssBytes": 110 * 2**20,
            "errors": 0,
        },
        {
            "batching": False,
            "concurrency": 32,
            "rps": 3000.0,
            "p50Ms": 10.2,
            "p99Ms": 52.7,
            "cpuCores": 1.0,
            "peakRssBytes": 112 * 2**20,
            "errors": 0,
        },
        {
            "batching": True,
            "concurrency": 1,
            "rps": 1600.0,
            "p50Ms": 0.6,
            "p99Ms": 1.0,
            "cpuCores": 0.9,
            "peakRssBytes": 115 * 2**20,
            "errors": 0,
        },
        {
            "batching": True,
            "concurrency": 32,
            "rps": 4650.0,
            "p50Ms": 6.6,
            "p99Ms": 12.7,
            "cpuCores": 1.1,
            "peakRssBytes": 130 * 2**20,
            "errors": 0,
        },
    ],
}


def test_batching_wins_when_it_pays_and_replicas_follow_the_target() -> None:
    rec, notes = recommend(RECORDED, slo_ms=20, target_rps=5000, max_batch=32)
    assert rec.slo_met and rec.max_batch_size == 32 and rec.max_delay_ms == 0
    assert rec.capacity_rps == 4650.0
    # 5000 / (0.7 * 4650) = 1.54 -> 2 replicas; twice the rate -> 4
    assert (rec.replicas_min, rec.replicas_max) == (2, 4)
    # 1.1 cores / 4650 rps per request, 2500 rps per replica = 0.59 cores, +20% -> 800m
    assert rec.cpu_millis == 800 and rec.cpu_limit_millis == 1600
    # peak 130 MiB + 25% = 162.5 -> 176 MiB (16 MiB steps); limit = request
    assert rec.memory_bytes == 176 * 2**20 == rec.memory_limit_bytes
    assert notes == [
        "One replica serves 4,650 requests/s with p99 12.7 ms at concurrency 32, with dynamic batching.",
        "Replicas: 5000 requests/s at 70% of 4,650 per replica -> 2 (up to 4 for twice the rate).",
        "CPU: 0.237 core-ms per request x 2,500 requests/s per replica = 0.59 cores, +20% -> 800m (limit 1600m). "
        "Memory: peak 130 MiB, +25% -> 176 MiB (limit = request).",
    ]


def test_small_gains_do_not_turn_batching_on() -> None:
    figures = copy.deepcopy(RECORDED)
    figures["http"][3]["rps"] = 3200.0  # 1.07x the unbatched 3000: noise, not a reason
    figures["http"][1]["p99Ms"] = 15.0
    rec, _ = recommend(figures, slo_ms=20, target_rps=None, max_batch=32)
    assert rec.max_batch_size == 1 and rec.capacity_rps == 3000.0
    assert (rec.replicas_min, rec.replicas_max) == (1, 2)
    assert (rec.cpu_millis, rec.cpu_limit_millis) == (900, 1800)  # sized for 70% of capacity
    light, _ = recommend(figures, slo_ms=20, target_rps=50, max_batch=32)
    assert light.cpu_millis == 100  # the floor
    assert light.cpu_limit_millis == 1000  # never below one core: CFS throttling breaks p99


def test_an_objective_that_cannot_be_met_is_said_with_the_gap() -> None:
    rec, notes = recommend(RECORDED, slo_ms=0.2, target_rps=100, max_batch=32)
    assert not rec.slo_met
    assert "cannot be met" in rec.note and "0.5 ms" in rec.note and "0.3 ms over" in rec.note
    assert notes[0].startswith("The p99 objective of 0.2 ms cannot be met")


def test_threads_only_when_one_thread_is_too_slow() -> None:
    assert choose_threads(RECORDED["inProcess"], slo_ms=20) == 1
    slow = [dict(c, p99Ms=c["p99Ms"] * 100) for c in RECORDED["inProcess"]]
    slow[2]["p99Ms"] = 10.0  # two threads: 10 ms against 30 ms on one
    assert choose_threads(slow, slo_ms=20) == 2


def test_report_fits_one_pull_request_comment() -> None:
    huge = copy.deepcopy(RECORDED)
    huge["inProcess"] = [dict(RECORDED["inProcess"][0], batch=b, threads=t) for b in range(1, 200) for t in (1, 2, 4)]
    huge["http"] = [dict(RECORDED["http"][0], concurrency=c) for c in range(1, 500)]
    rec, _ = recommend(huge, slo_ms=20, target_rps=100, max_batch=32)
    text = markdown("m@1", huge, rec, 20, 100, ["latency-vs-batch.png"])
    assert len(text) < LIMIT and "more rows left out" in text
    assert "| cpu | memory |" in text


def test_gpu_is_used_only_where_onnxruntime_has_cuda() -> None:
    from mlops_iac.profile import choose_provider

    assert choose_provider(True, ["CUDAExecutionProvider", "CPUExecutionProvider"]) == "CUDAExecutionProvider"
    assert choose_provider(True, ["CPUExecutionProvider"]) == "CPUExecutionProvider"
    assert choose_provider(False, ["CUDAExecutionProvider", "CPUExecutionProvider"]) == "CPUExecutionProvider"


def test_quick_and_budget_shrink_the_plan() -> None:
    full = plan((1, 8, 32), (1, 8, 32), quick=False, budget_s=None)
    quick = plan((1, 8, 32), (1, 8, 32), quick=True, budget_s=None)
    assert quick.batch_sizes == (1, 32) and quick.seconds_per_level < full.seconds_per_level
    tight = plan((1, 8, 32), (1, 8, 32), quick=False, budget_s=30)
    assert tight.seconds_per_cell < full.seconds_per_cell


def test_quick_profile_writes_report_plots_and_lock(converted: Path) -> None:
    result = CliRunner().invoke(main, ["profile", "iris@1", "--quick", "--budget", "20"])
    assert result.exit_code == 0, result.output
    folder = converted / ".mlops/profiles/iris-1"
    for name in ("latency-vs-batch.png", "latency-vs-concurrency.png", "throughput-vs-cores.png"):
        assert (folder / name).read_bytes().startswith(b"\x89PNG")
    report = (folder / "report.md").read_text()
    assert "### Profile of iris@1" in report and len(report) < LIMIT
    locked = read_lock(converted / "mlops.lock").version("iris", 1)
    assert locked is not None and locked.recommendation is not None and locked.profile is not None
    assert {r["concurrency"] for r in locked.profile["http"]} == {1, 8}
    assert all(r["errors"] == 0 and r["rps"] > 0 for r in locked.profile["http"])
    shown = json.loads(CliRunner().invoke(main, ["lock", "show", "--json"]).output)
    assert shown["models"]["iris"]["versions"]["1"]["recommendation"]["cpuMillis"] >= 100
    plan_out = CliRunner().invoke(main, ["synth", "--out", "out", "--dry-run"])
    assert plan_out.exit_code == 0, plan_out.output
    assert '"cpu": "profile"' in plan_out.output  # hardware: auto took the recommendation
