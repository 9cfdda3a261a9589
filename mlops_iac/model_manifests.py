"""The objects of a model across its versions, as plain data. Pure.

`manifests.py` makes each version's own objects; here is what spans them: the model's stable
Service, the HTTPRoute that splits traffic (and mirrors to a shadow), the alerts and the
dashboard, `skipped()` (what a target without the CRDs does not get) and `target_objects()`,
every object of a target in the order they are applied.
"""

from __future__ import annotations

from .contract import METRICS_PORT, PORT
from .manifests import (
    VERSION_HEADER,
    Object,
    grpc_service_port,
    labels,
    meta,
    namespace_objects,
    operator_labels,
    version_name,
    version_objects,
)
from .pinned import PinnedDeployment
from .resolve import ResolvedDeployment
from .spec.targets import KubernetesTarget


def model_objects(project: str, target: KubernetesTarget, dep: PinnedDeployment) -> list[Object]:
    """The stable Service of the model and, with a gateway, the HTTPRoute that splits traffic."""
    ns = target.namespace_name
    label_set = {k: v for k, v in labels(project, dep.model, dep.name, 0).items() if k != "app.kubernetes.io/version"}
    # Without a gateway this Service spreads requests over every version's ready pods: the split
    # follows the replica counts, not `traffic`.
    objects: list[Object] = [
        {
            "apiVersion": "v1",
            "kind": "Service",
            "metadata": meta(dep.name, ns, label_set),
            "spec": {
                "type": "ClusterIP",
                "selector": {"app.kubernetes.io/name": dep.model, "app.kubernetes.io/part-of": project},
                "ports": [{"name": "http", "port": PORT, "targetPort": "http", "protocol": "TCP"}, grpc_service_port()],
            },
        }
    ]
    if target.gateway is not None:
        objects.append(
            {
                "apiVersion": "gateway.networking.k8s.io/v1",
                "kind": "HTTPRoute",
                "metadata": meta(dep.name, ns, label_set),
                "spec": _route(target, dep),
            }
        )
    operator = operator_labels(target, dep)
    if operator is not None:
        objects.append(alert_rules(ns, {**label_set, **operator}, dep))
    if dep.monitoring.metrics:
        objects.append(dashboard(ns, label_set, dep))
    return objects


def _route(target: KubernetesTarget, dep: PinnedDeployment) -> Object:
    """A rule per version (its path, or the version header) ahead of the weighted rule: the
    Gateway API prefers the longer path and the match with more headers, so
    /v2/models/M/versions/N/... and `x-model-version: N` always reach version N, even at weight 0."""
    assert target.gateway is not None
    prefix = f"/v2/models/{dep.model}"
    pinned: list[Object] = [
        {
            "matches": [
                {"path": {"type": "PathPrefix", "value": f"{prefix}/versions/{v.number}"}},
                {
                    "path": {"type": "PathPrefix", "value": prefix},
                    "headers": [{"type": "Exact", "name": VERSION_HEADER, "value": str(v.number)}],
                },
            ],
            "backendRefs": [{"name": version_name(dep.model, v), "port": PORT}],
        }
        for v in dep.versions
    ]
    weighted: Object = {
        "matches": [{"path": {"type": "PathPrefix", "value": prefix}}],
        "backendRefs": [
            {"name": version_name(dep.model, v), "port": PORT, "weight": v.weight}
            for v in dep.versions
            if v.number not in dep.shadow
        ],
    }
    if dep.shadow:  # the gateway copies a share of requests to the shadow and drops its answers
        weighted["filters"] = [
            {
                "type": "RequestMirror",
                "requestMirror": {
                    "backendRef": {"name": version_name(dep.model, v), "port": PORT},
                    "percent": dep.shadow[v.number],
                },
            }
            for v in dep.versions
            if v.number in dep.shadow
        ]
    route: Object = {
        "parentRefs": [
            {
                "name": target.gateway.name,
                **({"namespace": target.gateway.namespace} if target.gateway.namespace else {}),
            }
        ],
        "rules": [*pinned, weighted],
    }
    if target.hostname:
        route["hostnames"] = [target.hostname]
    return route


def target_objects(project: str, target: KubernetesTarget, deployments: tuple[PinnedDeployment, ...]) -> list[Object]:
    """Every object of a target, in the order they are applied; what `render` prints."""
    objects = namespace_objects(project, target)
    for dep in deployments:
        for v in dep.versions:
            objects += version_objects(project, target, dep, v, v.image or "", v.onnx_digest or "")
        objects += model_objects(project, target, dep)
    return objects


def skipped(target: KubernetesTarget, dep: ResolvedDeployment) -> list[str]:
    """What the target does not get, and why: the objects whose CRDs it does not declare."""
    out = []
    if target.gateway is None:
        out.append(
            "HTTPRoute: the target has no `gateway:`; the stable Service spreads requests over every "
            "version's pods by replica count, not by `traffic`"
        )
    if dep.monitoring.metrics and not target.monitoring.prometheus_operator.enabled:
        out.append(
            "ServiceMonitor, PrometheusRule: the target does not set `monitoring.prometheusOperator.enabled`; "
            f"metrics are served on port {METRICS_PORT} (`metrics`) for any Prometheus in namespace "
            f"`{target.monitoring.namespace}`"
        )
    if not target.creates_namespace:
        out.append(
            f"Namespace: `{target.namespace_name}` exists already; label it for Pod Security `restricted` yourself"
        )
    return out


def series_selector(namespace: str, model: str) -> str:
    """The deployment's series as the ServiceMonitor labels them (namespace, the version Services)."""
    return f'namespace="{namespace}",service=~"{model}-v[0-9]+-[0-9a-f]{{8}}"'


def alert_rules(ns: str, label_set: dict[str, str], dep: PinnedDeployment) -> Object:
    """Alerts as a prometheus-operator PrometheusRule."""
    from .monitoring.alerts import rule_groups

    return {
        "apiVersion": "monitoring.coreos.com/v1",
        "kind": "PrometheusRule",
        "metadata": meta(dep.name, ns, label_set),
        "spec": {"groups": rule_groups(dep, series_selector(ns, dep.model))},
    }


def dashboard(ns: str, label_set: dict[str, str], dep: PinnedDeployment) -> Object:
    """A dashboard for Grafana's sidecar: a plain ConfigMap, harmless where no Grafana looks."""
    from .monitoring.alerts import dashboard_json

    return {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": meta(f"{dep.name}-dashboard", ns, {**label_set, "grafana_dashboard": "1"}),
        "data": {f"{dep.name}.json": dashboard_json(dep, series_selector(ns, dep.model))},
    }
