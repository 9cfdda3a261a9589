"""Prometheus metrics of the server, in a registry of its own (no global state).

prometheus-client formats and serves everything. Histograms on the request path are kept
by `FastHistogram` instead of prometheus-client's `Histogram`: its `observe` takes a lock
and walks the buckets, about 5 us a call on our machines, twice per request, which is a
tenth of the whole request. Ours is a bisect and two additions, without a lock: every
observation happens on the event loop's one thread (batches report back to it too).

With worker processes (`workers.py`) each worker keeps its own metrics and, every second,
writes them to a folder the workers share; `/metrics` on any worker adds the others' (at
most a second old) to its own live ones: counters and histograms add up, the readiness
gauge is the lowest (ready when every worker is). A worker that dies leaves its counters
behind (`retire`), so its replacement adds to them instead of taking them back to zero.
"""

from __future__ import annotations

import asyncio
import bisect
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import orjson
from prometheus_client import CollectorRegistry, Counter, Gauge, generate_latest
from prometheus_client.core import HistogramMetricFamily
from prometheus_client.metrics_core import Metric
from prometheus_client.registry import Collector

LATENCY_BUCKETS = (0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024)
DROP_REASONS = ("full", "error")
RETIRED = "retired.json"  # the counters of workers that died, in the workers' folder


class FastHistogram:
    """One labelled child: counts per bucket (the last is +Inf) and the sum."""

    __slots__ = ("bounds", "counts", "sum")

    def __init__(self, bounds: Sequence[float]) -> None:
        self.bounds = list(bounds)
        self.counts = [0] * (len(bounds) + 1)
        self.sum = 0.0

    def observe(self, value: float) -> None:
        self.counts[bisect.bisect_left(self.bounds, value)] += 1
        self.sum += value


class HistogramFamily(Collector):
    def __init__(self, name: str, documentation: str, labels: Sequence[str], bounds: Sequence[float]) -> None:
        self.name, self.documentation = name, documentation
        self.label_names = list(labels)
        self.bounds = tuple(bounds)
        self.children: dict[tuple[str, ...], FastHistogram] = {}

    def labels(self, *values: str) -> FastHistogram:
        child = self.children.get(values)
        if child is None:
            child = self.children[values] = FastHistogram(self.bounds)
        return child

    def collect(self) -> Iterator[HistogramMetricFamily]:
        family = HistogramMetricFamily(self.name, self.documentation, labels=self.label_names)
        for values, child in sorted(self.children.items()):
            running, buckets = 0, []
            for bound, count in zip((*self.bounds, float("inf")), child.counts, strict=True):
                running += count
                buckets.append((_bound(bound), running))
            family.add_metric(list(values), buckets, child.sum)
        yield family


def _bound(value: float) -> str:
    return "+Inf" if value == float("inf") else repr(float(value))


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        labels = ["model", "version"]
        self.requests = Counter(
            "mlops_requests",
            "Inference requests by model, version and status.",
            [*labels, "status"],
            registry=self.registry,
        )
        self.latency = self._histogram(
            "mlops_request_seconds", "Time from request to response.", labels, LATENCY_BUCKETS
        )
        self.queue = self._histogram(
            "mlops_queue_seconds", "Time a request waited for its batch.", labels, LATENCY_BUCKETS
        )
        self.inference = self._histogram("mlops_inference_seconds", "Time in onnxruntime.", labels, LATENCY_BUCKETS)
        self.batch = self._histogram(
            "mlops_batch_size", "Rows in each merged batch (dynamic batching only).", labels, BATCH_BUCKETS
        )
        self.dropped = Counter(
            "mlops_collection_dropped",
            "Data-collection records dropped, by reason: full (no room in the queue or on the disk), "
            "error (any other write failure).",
            ["reason"],
            registry=self.registry,
        )
        for reason in DROP_REASONS:  # at 0 from the start: increase() misses a series' first value
            self.dropped.labels(reason)
        self.ready = Gauge("mlops_ready", "1 when every model is loaded and warm.", registry=self.registry)
        self.traffic = Counter(
            "mlops_traffic_routed", "Unversioned requests routed to each version.", labels, registry=self.registry
        )
        self.shared: tuple[Path, int] | None = None  # the workers' folder, this worker's number

    def _histogram(
        self, name: str, documentation: str, labels: Sequence[str], bounds: Sequence[float]
    ) -> HistogramFamily:
        family = HistogramFamily(name, documentation, labels, bounds)
        self.registry.register(family)
        return family

    def drop(self, reason: str) -> None:
        """One data-collection record lost (`reason`: one of DROP_REASONS, see collect.py)."""
        self.dropped.labels(reason).inc()

    def share(self, folder: Path, index: int) -> None:
        self.shared = (folder, index)

    def render(self) -> bytes:
        if self.shared is None:
            return generate_latest(self.registry)
        # Published first: what this answer shows of this worker is then on disk, so it stays
        # counted (in retired.json) if the worker dies next, and the sums never go backwards.
        self.publish()
        others = self._others()
        merged = _Merged(self._series(), [*others, *self._retired()])
        merged.add("mlops_workers", "Worker processes whose metrics this answer adds up.", 1 + len(others))
        return generate_latest(merged)

    def _series(self) -> list[Any]:
        return [
            [m.name, m.type, m.documentation, [[s.name, s.labels, s.value] for s in m.samples]]
            for m in self.registry.collect()
        ]

    def publish(self) -> None:
        """This worker's series, for the other workers' /metrics (written whole, then renamed)."""
        assert self.shared is not None
        folder, index = self.shared
        scratch = folder / f".worker-{index}.json"
        scratch.write_bytes(orjson.dumps(self._series()))
        scratch.replace(folder / f"worker-{index}.json")

    async def publish_forever(self, every: float = 1.0) -> None:
        while True:
            self.publish()
            await asyncio.sleep(every)

    def _retired(self) -> list[list[Any]]:
        assert self.shared is not None
        try:
            return [orjson.loads((self.shared[0] / RETIRED).read_bytes())]
        except (OSError, orjson.JSONDecodeError):  # none yet
            return []

    def _others(self) -> list[list[Any]]:
        assert self.shared is not None
        folder, index = self.shared
        found = []
        for path in sorted(folder.glob("worker-*.json")):
            if path.name != f"worker-{index}.json":
                try:
                    found.append(orjson.loads(path.read_bytes()))
                except (OSError, orjson.JSONDecodeError):  # a worker that is just starting or gone
                    continue
        return found


def retire(folder: Path, index: int) -> None:
    """Keeps the counters and histograms of worker `index`, which is gone, in the workers'
    `retired.json`, which every /metrics adds: its replacement starts from zero, and the sums
    must not go backwards (a counter that drops reads as a reset to Prometheus). Gauges are
    left out: readiness and the like are the live workers' only. Called by the supervisor
    before it starts the replacement, which alone writes worker-<index>.json next."""
    path = folder / f"worker-{index}.json"
    try:
        last = orjson.loads(path.read_bytes())
    except (OSError, orjson.JSONDecodeError):  # it died before it published anything
        return
    try:
        kept = [orjson.loads((folder / RETIRED).read_bytes())]
    except (OSError, orjson.JSONDecodeError):
        kept = []
    merged = _Merged([series for series in last if series[1] != "gauge"], kept)
    scratch = folder / f".{RETIRED}"
    scratch.write_bytes(orjson.dumps(merged.series()))
    scratch.replace(folder / RETIRED)
    path.unlink()


class _Merged:
    """Several workers' series as one registry: sums, except the lowest of a gauge (readiness)
    and of `_created` (when a series began)."""

    def __init__(self, own: list[Any], others: list[list[Any]]) -> None:
        self.families: dict[str, tuple[str, str, dict[tuple[str, tuple[tuple[str, str], ...]], float]]] = {}
        for series in (own, *others):
            for name, kind, documentation, samples in series:
                values = self.families.setdefault(name, (kind, documentation, {}))[2]
                for sample, labels, value in samples:
                    key = (sample, tuple(labels.items()))
                    if key not in values:
                        values[key] = value
                    elif kind == "gauge" or sample.endswith("_created"):
                        values[key] = min(values[key], value)
                    else:
                        values[key] += value

    def series(self) -> list[Any]:
        """As `Metrics._series` writes them."""
        return [
            [name, kind, documentation, [[sample, dict(labels), value] for (sample, labels), value in values.items()]]
            for name, (kind, documentation, values) in self.families.items()
        ]

    def add(self, name: str, documentation: str, value: float) -> None:
        self.families[name] = ("gauge", documentation, {(name, ()): value})

    def collect(self) -> Iterator[Metric]:
        for name, (kind, documentation, values) in self.families.items():
            metric = Metric(name, documentation, kind)
            for (sample, labels), value in values.items():
                metric.add_sample(sample, dict(labels), value)
            yield metric
