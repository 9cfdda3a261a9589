from __future__ import annotations

import random

from prometheus_client import CollectorRegistry, Histogram, generate_latest

from mlops_iac.serving.metrics import LATENCY_BUCKETS, HistogramFamily


def test_fast_histogram_exposes_what_prometheus_client_would() -> None:
    ours_registry, theirs_registry = CollectorRegistry(), CollectorRegistry()
    ours = HistogramFamily("h_seconds", "help", ["model", "version"], LATENCY_BUCKETS)
    ours_registry.register(ours)
    theirs = Histogram("h_seconds", "help", ["model", "version"], buckets=LATENCY_BUCKETS, registry=theirs_registry)
    rng = random.Random(3)
    values = [rng.choice([0.0001, 0.005, 5.0, 7.5]) if i % 7 == 0 else rng.expovariate(300) for i in range(5000)]
    for i, value in enumerate(values):
        labels = ("iris", str(1 + i % 2))
        ours.labels(*labels).observe(value)
        theirs.labels(*labels).observe(value)
    ours_text = generate_latest(ours_registry).decode().splitlines()
    theirs_text = [line for line in generate_latest(theirs_registry).decode().splitlines() if "_created" not in line]
    assert sorted(ours_text) == sorted(theirs_text)
