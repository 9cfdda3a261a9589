"""Profiling and right-sizing: measure a model, recommend CPU, memory, threads, batching and
replicas for a latency objective and a target rate."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..convert.data import Sample
from . import harness, load
from .recommend import Recommendation, recommend

PROVIDERS = ("CPUExecutionProvider", "CUDAExecutionProvider")


@dataclass(frozen=True)
class Plan:
    batch_sizes: tuple[int, ...]
    concurrency: tuple[int, ...]
    threads: tuple[int, ...]
    seconds_per_cell: float
    seconds_per_level: float
    quick: bool


def plan(batch_sizes: tuple[int, ...], concurrency: tuple[int, ...], *, quick: bool, budget_s: float | None) -> Plan:
    """How long to measure each point: full by default, short with --quick, fitted to a budget."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    threads = tuple(sorted({1, min(2, cores), min(4, cores)}))
    cell, level = (0.3, 1.0) if quick else (1.0, 4.0)
    if quick:
        batch_sizes = tuple(sorted({min(batch_sizes), max(batch_sizes)}))
        threads = threads[:2]
    if budget_s:
        runs = len(batch_sizes) * len(threads) * cell + 2 * len(concurrency) * level
        scale = min(1.0, max(0.1, (budget_s - 15) / runs))  # 15 s for start-ups and the memory probe
        cell, level = cell * scale, max(0.5, level * scale)
    return Plan(batch_sizes, concurrency, threads, cell, level, quick)


def choose_provider(gpu: bool, available: list[str]) -> str:
    """CUDA when asked for and present; otherwise the CPU, and the report says which ran."""
    return "CUDAExecutionProvider" if gpu and "CUDAExecutionProvider" in available else "CPUExecutionProvider"


def run(
    model: Path, sample: Sample, measure: Plan, workdir: Path, *, gpu: bool = False, progress: Any = None
) -> dict[str, Any]:
    """Every figure of the profile (the in-process grid, memory, the HTTP load test)."""
    import onnxruntime as ort

    provider = choose_provider(gpu, ort.get_available_providers())
    figures: dict[str, Any] = {"machine": harness.machine(provider), "quick": measure.quick}
    figures["inProcess"] = harness.grid(
        model, sample, measure.batch_sizes, measure.threads, measure.seconds_per_cell, provider, progress
    )
    figures["memory"] = harness.peak_memory(model, sample, max(measure.batch_sizes), 1, workdir, provider)
    figures["http"] = load.load_test(
        model, sample, 1, measure.concurrency, max(measure.batch_sizes), measure.seconds_per_level, workdir, progress
    )
    return figures


__all__ = ["Plan", "Recommendation", "choose_provider", "plan", "recommend", "run"]
