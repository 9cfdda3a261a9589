"""Alert rules and a Grafana dashboard for a deployment, as plain data. Pure.

The rules go into the Kubernetes stack as a prometheus-operator PrometheusRule, and the
same groups are what `promtool check rules` and `promtool test rules` read; the dashboard
goes into a ConfigMap that Grafana's sidecar picks up (label grafana_dashboard: "1").
"""

from __future__ import annotations

import json
from typing import Any, Protocol


class Objectives(Protocol):
    """The alert thresholds of a deployment's monitoring."""

    @property
    def alert_p99_ms(self) -> float: ...
    @property
    def alert_error_rate(self) -> float: ...


class Watched(Protocol):
    """What the rules need of a deployment (a resolved one is one): no dependency on the core."""

    @property
    def name(self) -> str: ...
    @property
    def model(self) -> str: ...
    @property
    def monitoring(self) -> Objectives: ...


def rule_groups(dep: Watched, selector: str, *, window: str = "5m", hold: str = "5m") -> list[dict[str, Any]]:
    """p99 latency over the objective, error rate over its bound, data-collection drops, a
    server Prometheus cannot scrape.

    `selector` is the PromQL label matcher of the deployment's series (the operator adds
    namespace and service labels; a plain Prometheus its job).
    """
    mon = dep.monitoring
    requests = f'mlops_requests_total{{{selector},model="{dep.model}"}}'
    failures = f'mlops_requests_total{{{selector},model="{dep.model}",status!="200"}}'
    buckets = f'mlops_request_seconds_bucket{{{selector},model="{dep.model}"}}'
    common = {"deployment": dep.name, "model": dep.model}
    return [
        {
            "name": f"mlops-{dep.name}",
            "rules": [
                {
                    "alert": "ModelLatencyP99High",
                    "expr": f"histogram_quantile(0.99, sum by (le, version) (rate({buckets}[{window}]))) > "
                    f"{mon.alert_p99_ms / 1000:g}",
                    "for": hold,
                    "labels": {"severity": "warning", **common},
                    "annotations": {
                        "summary": f"{dep.name}: p99 latency over {mon.alert_p99_ms:g} ms",
                        "description": "Version {{ $labels.version }} is slower than the objective at the "
                        "99th percentile; see the dashboard's latency panel.",
                    },
                },
                {
                    "alert": "ModelErrorRateHigh",
                    "expr": f"sum by (version) (rate({failures}[{window}])) / "
                    f"sum by (version) (rate({requests}[{window}])) > {mon.alert_error_rate:g}",
                    "for": hold,
                    "labels": {"severity": "critical", **common},
                    "annotations": {
                        "summary": f"{dep.name}: more than {mon.alert_error_rate:.1%} of requests fail",
                        "description": "Version {{ $labels.version }} answers too many requests with an "
                        "error; see the dashboard's errors panel.",
                    },
                },
                {
                    "alert": "ModelDataCollectionDropping",
                    "expr": f"sum(increase(mlops_collection_dropped_total{{{selector}}}[{window}])) > 0",
                    "for": "0m",
                    "labels": {"severity": "warning", **common},
                    "annotations": {
                        "summary": f"{dep.name}: data-collection records are being dropped",
                        "description": "mlops_collection_dropped_total by reason: `full`, the queue or "
                        "the disk is full (the sink is too slow or down, or the volume needs room); `error`, "
                        "writes fail otherwise. Collection resumes by itself once the sink works.",
                    },
                },
                {
                    "alert": "ModelTargetDown",
                    "expr": f"up{{{selector}}} == 0",
                    "for": hold,
                    "labels": {"severity": "critical", **common},
                    "annotations": {
                        "summary": f"{dep.name}: Prometheus cannot scrape a model server",
                        "description": "{{ $labels.instance }} has not answered /metrics: the server is down, "
                        "or its metrics port cannot be reached.",
                    },
                },
            ],
        }
    ]


def dashboard(dep: Watched, selector: str) -> dict[str, Any]:
    """Request rate, latency quantiles, batch sizes, errors per version, traffic split."""
    s = f'{selector},model="{dep.model}"'
    latency = f"rate(mlops_request_seconds_bucket{{{s}}}[5m])"
    errors = f'rate(mlops_requests_total{{{s},status!="200"}}[5m])'

    def panel(i: int, title: str, exprs: list[tuple[str, str]], unit: str) -> dict[str, Any]:
        return {
            "id": i,
            "title": title,
            "type": "timeseries",
            "gridPos": {"h": 8, "w": 12, "x": 12 * (i % 2), "y": 8 * (i // 2)},
            "fieldConfig": {"defaults": {"unit": unit}},
            "targets": [
                {"expr": e, "legendFormat": legend, "refId": chr(65 + k)} for k, (e, legend) in enumerate(exprs)
            ],
        }

    return {
        "title": f"mlops-iac: {dep.name}",
        "uid": f"mlops-{dep.name}"[:40],
        "schemaVersion": 39,
        "tags": ["mlops-iac", dep.model],
        "time": {"from": "now-6h", "to": "now"},
        "refresh": "30s",
        "panels": [
            panel(
                0,
                "Requests per second",
                [(f"sum by (version) (rate(mlops_requests_total{{{s}}}[5m]))", "v{{version}}")],
                "reqps",
            ),
            panel(
                1,
                "Latency",
                [(f"histogram_quantile({q}, sum by (le) ({latency}))", f"p{int(q * 100)}") for q in (0.5, 0.9, 0.99)],
                "s",
            ),
            panel(
                2,
                "Batch size (dynamic batching)",
                [
                    (
                        f"histogram_quantile(0.5, sum by (le, version) (rate(mlops_batch_size_bucket{{{s}}}[5m])))",
                        "median, v{{version}}",
                    )
                ],
                "short",
            ),
            panel(
                3, "Errors per version", [(f"sum by (version, status) ({errors})", "v{{version}} {{status}}")], "reqps"
            ),
            panel(
                4,
                "Traffic split",
                [
                    (
                        f"sum by (version) (rate(mlops_requests_total{{{s}}}[5m])) / ignoring(version) "
                        f"group_left sum(rate(mlops_requests_total{{{s}}}[5m]))",
                        "v{{version}}",
                    )
                ],
                "percentunit",
            ),
        ],
    }


def dashboard_json(dep: Watched, selector: str) -> str:
    return json.dumps(dashboard(dep, selector), indent=2, sort_keys=True) + "\n"
