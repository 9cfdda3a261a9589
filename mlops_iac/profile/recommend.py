"""From measured figures to resources: pure, no timing, every step stated in the note.

- Mode: with dynamic batching only when it serves at least 20% more requests per second
  with p99 under the objective (below that the gain is within noise, and batching costs
  latency at low load).
- Capacity of one replica: the most requests per second measured with p99 under the
  objective; we plan replicas to run at 70% of it.
- CPU: the cores the server used per request at that point, times the rate one replica will
  carry (its share of targetRps), plus 20%, in steps of 100m, at least 100m. The limit is
  twice that and at least one core: a tighter CFS quota throttles a burst for the rest of
  the 100 ms period, which is what breaks p99 objectives.
- Memory: the highest resident memory measured (server under load, or the largest batch in
  process), plus 25%, in steps of 16 MiB; the limit equals the request.
- Threads: 1, unless batch-1 p99 on one thread is over half the objective and more threads
  cut it by 30% or more.
- Replicas: enough for the target rate at 70% of capacity; at most twice that.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

from pydantic import BaseModel, ConfigDict

HEADROOM_CPU = 0.20
HEADROOM_MEMORY = 0.25
UTILISATION = 0.70
BATCHING_GAIN = 1.20
MEMORY_STEP = 16 * 2**20


class Recommendation(BaseModel):
    """What the figures recommend: the profile's own result, which the CLI stores in
    mlops.lock (whose `Recommendation` checks it again), so profiling knows nothing of the lock."""

    model_config = ConfigDict(frozen=True)
    cpu_millis: int
    cpu_limit_millis: int
    memory_bytes: int
    memory_limit_bytes: int
    threads: int
    max_batch_size: int
    max_delay_ms: float
    replicas_min: int
    replicas_max: int
    capacity_rps: float
    slo_met: bool
    note: str


def _round_up(value: float, step: float) -> int:
    return int(math.ceil(value / step) * step)


def choose_threads(grid: Sequence[dict[str, Any]], slo_ms: float) -> int:
    single = [c for c in grid if c["batch"] == 1]
    one = next((c for c in single if c["threads"] == 1), None)
    if one is None:
        return 1
    best = min(single, key=lambda c: c["p99Ms"])
    if one["p99Ms"] > slo_ms / 2 and best["p99Ms"] <= 0.7 * one["p99Ms"]:
        return int(best["threads"])
    return 1


def _capacity(http: Sequence[dict[str, Any]], batching: bool, slo_ms: float) -> dict[str, Any] | None:
    feasible = [r for r in http if r["batching"] == batching and r["p99Ms"] <= slo_ms and not r.get("errors")]
    return max(feasible, key=lambda r: r["rps"]) if feasible else None


def recommend(
    figures: dict[str, Any], *, slo_ms: float, target_rps: float | None, max_batch: int
) -> tuple[Recommendation, list[str]]:
    """The recommendation and the sentences that explain it."""
    http = figures["http"]
    notes = []
    plain, batched = _capacity(http, False, slo_ms), _capacity(http, True, slo_ms)
    slo_met = plain is not None or batched is not None
    if batched is not None and (plain is None or batched["rps"] >= BATCHING_GAIN * plain["rps"]):
        point, batching = batched, True
    elif plain is not None:
        point, batching = plain, False
    else:
        point = min(http, key=lambda r: r["p99Ms"])
        batching = bool(point["batching"])
        notes.append(
            f"The p99 objective of {slo_ms:g} ms cannot be met on this hardware: the best p99 "
            f"measured is {point['p99Ms']:g} ms (at concurrency {point['concurrency']}), "
            f"{point['p99Ms'] - slo_ms:.3g} ms over. Resources below are for that best case."
        )
    capacity = float(point["rps"])
    notes.append(
        f"One replica serves {capacity:,.0f} requests/s with p99 {point['p99Ms']:g} ms at concurrency "
        f"{point['concurrency']}, {'with' if batching else 'without'} dynamic batching."
    )
    low, high = _replicas(capacity, target_rps, notes)
    carried = target_rps / low if target_rps else capacity * UTILISATION
    per_request = max(float(point.get("cpuCores", 0.1)), 0.01) / max(capacity, 1e-9)
    cores = per_request * carried
    cpu = max(_round_up(cores * (1 + HEADROOM_CPU) * 1000, 100), 100)
    cpu_limit = max(2 * cpu, 1000)
    peak = max([int(r.get("peakRssBytes", 0)) for r in http] + [int(figures["memory"]["peakBytes"])])
    memory = _round_up(peak * (1 + HEADROOM_MEMORY), MEMORY_STEP)
    notes.append(
        f"CPU: {per_request * 1000:.3f} core-ms per request x {carried:,.0f} requests/s per replica = "
        f"{cores:.2f} cores, +{HEADROOM_CPU:.0%} -> {cpu}m (limit {cpu_limit}m). "
        f"Memory: peak {peak / 2**20:.0f} MiB, +{HEADROOM_MEMORY:.0%} -> {memory // 2**20} MiB "
        "(limit = request)."
    )
    threads = choose_threads(figures["inProcess"], slo_ms)
    return Recommendation(
        cpu_millis=cpu,
        cpu_limit_millis=cpu_limit,
        memory_bytes=memory,
        memory_limit_bytes=memory,
        threads=threads,
        max_batch_size=max_batch if batching else 1,
        max_delay_ms=0.0,
        replicas_min=low,
        replicas_max=high,
        capacity_rps=round(capacity, 1),
        slo_met=slo_met,
        note=" ".join(notes),
    ), notes


def _replicas(capacity: float, target_rps: float | None, notes: list[str]) -> tuple[int, int]:
    if not target_rps:
        notes.append("No targetRps: 1 to 2 replicas.")
        return 1, 2
    usable = max(capacity * UTILISATION, 1e-9)
    low = max(1, math.ceil(target_rps / usable))
    high = max(low, math.ceil(2 * target_rps / usable))
    notes.append(
        f"Replicas: {target_rps:g} requests/s at {UTILISATION:.0%} of {capacity:,.0f} per replica -> "
        f"{low} (up to {high} for twice the rate)."
    )
    return low, high
