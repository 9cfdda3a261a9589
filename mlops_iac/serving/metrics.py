"""Prometheus metrics of the server, in a registry of its own (no global state)."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

LATENCY_BUCKETS = (0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25,
                   0.5, 1.0, 2.5, 5.0)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024)


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        labels = ["model", "version"]
        self.requests = Counter("mlops_requests", "Inference requests by model, version and status.",
                                [*labels, "status"], registry=self.registry)
        self.latency = Histogram("mlops_request_seconds", "Time from request to response.",
                                 labels, buckets=LATENCY_BUCKETS, registry=self.registry)
        self.queue = Histogram("mlops_queue_seconds", "Time a request waited for its batch.",
                               labels, buckets=LATENCY_BUCKETS, registry=self.registry)
        self.inference = Histogram("mlops_inference_seconds", "Time in onnxruntime.",
                                   labels, buckets=LATENCY_BUCKETS, registry=self.registry)
        self.batch = Histogram("mlops_batch_size", "Rows in the batch that ran a request.",
                               labels, buckets=BATCH_BUCKETS, registry=self.registry)
        self.dropped = Counter("mlops_collection_dropped", "Data-collection records dropped.",
                               registry=self.registry)
        self.ready = Gauge("mlops_ready", "1 when every model is loaded and warm.",
                           registry=self.registry)
        self.traffic = Counter("mlops_traffic_routed", "Unversioned requests routed to each version.",
                               labels, registry=self.registry)

    def render(self) -> bytes:
        return generate_latest(self.registry)
