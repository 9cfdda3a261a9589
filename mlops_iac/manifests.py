"""The Kubernetes objects of a deployment, as plain data. Pure.

One source of truth for both ways a user deploys: the Pulumi components create typed
resources from these objects, and `mlops-iac render --format yaml` prints them for GitOps
and offline checks. Each model version gets its own, immutable set of objects, named with
the version and the artifact's digest, so a new version adds objects and never mutates the
old ones; traffic moves between them through a Gateway API HTTPRoute.
"""

from __future__ import annotations

from typing import Any

from .plan import canonical_json, collection_config
from .resolve import ResolvedDeployment, ResolvedVersion
from .serving.config import ModelConfig, ServerConfig
from .spec.monitoring import HttpSink
from .spec.targets import KubernetesTarget

PORT = 8080
METRICS_PORT = 8082  # /metrics without the API key, for Prometheus (ServerConfig.metrics_port)
UID = 10001
Object = dict[str, Any]
# Beside each object the checks it does not pass, with the reason: checkov reads these.
SKIPS = {
    "CKV_K8S_35": "the API key reaches the server as an environment variable from a Secret; the "
                  "server reads no files besides its model",
}


def version_name(model: str, version: ResolvedVersion) -> str:
    """`iris-v3-8f03a2cb`: the version and the artifact's digest, so it names one content."""
    assert version.number is not None and version.digest is not None
    return f"{model}-v{version.number}-{version.digest.removeprefix('sha256:')[:8]}"


def labels(project: str, model: str, instance: str, version: int) -> dict[str, str]:
    return {"app.kubernetes.io/name": model, "app.kubernetes.io/instance": instance,
            "app.kubernetes.io/version": str(version), "app.kubernetes.io/component": "model-server",
            "app.kubernetes.io/part-of": project, "app.kubernetes.io/managed-by": "mlops-iac"}


def _meta(name: str, namespace: str, label_set: dict[str, str], **extra: Any) -> Object:
    return {"name": name, "namespace": namespace, "labels": label_set, **extra}


def _quantity_cpu(millis: int) -> str:
    return f"{millis}m"


def _quantity_memory(size: int) -> str:
    return f"{-(-size // 2**20)}Mi"


def server_settings(dep: ResolvedDeployment, version: ResolvedVersion, onnx_digest: str) -> ServerConfig:
    """The server's settings for one version of a deployment (the model is in the image)."""
    assert version.number is not None
    mon, hw = dep.monitoring, version.hardware
    return ServerConfig(deployment=dep.name, auth=dep.auth == "key", metrics=mon.metrics,
                        metrics_port=METRICS_PORT if mon.metrics else None,
                        collection=collection_config(mon, "/data/"),
                        models=(ModelConfig(name=dep.model, version=version.number, path="/app/model/model.onnx",
                                            digest=onnx_digest, threads=hw.threads, max_batch_size=hw.max_batch_size,
                                            max_delay_ms=hw.max_delay_ms, gpu=hw.gpu > 0),))


def secret_name(dep: ResolvedDeployment) -> str:
    return f"{dep.name}-api-key"


def version_objects(project: str, target: KubernetesTarget, dep: ResolvedDeployment,
                    version: ResolvedVersion, image: str, onnx_digest: str) -> list[Object]:
    """ServiceAccount, ConfigMap, Deployment, Service, PodDisruptionBudget, HPA, NetworkPolicy,
    and a ServiceMonitor when metrics are on: everything one version runs with."""
    assert version.number is not None
    name, ns = version_name(dep.model, version), target.namespace
    label_set = labels(project, dep.model, name, version.number)
    selector = {"app.kubernetes.io/name": dep.model, "app.kubernetes.io/instance": name}
    settings = canonical_json(server_settings(dep, version, onnx_digest).model_dump(mode="json"))
    objects: list[Object] = [
        {"apiVersion": "v1", "kind": "ServiceAccount", "metadata": _meta(name, ns, label_set),
         "automountServiceAccountToken": False},
        {"apiVersion": "v1", "kind": "ConfigMap", "metadata": _meta(name, ns, label_set),
         "data": {"server.json": settings}},
        _deployment(name, ns, label_set, selector, dep, version, image),
        {"apiVersion": "v1", "kind": "Service", "metadata": _meta(name, ns, label_set),
         "spec": {"type": "ClusterIP", "selector": selector,
                  "ports": [{"name": "http", "port": PORT, "targetPort": "http", "protocol": "TCP"},
                            *_metrics_ports(dep, {"port": METRICS_PORT, "targetPort": "metrics"})]}},
        _disruption_budget(name, ns, label_set, selector, version),
        {"apiVersion": "autoscaling/v2", "kind": "HorizontalPodAutoscaler", "metadata": _meta(name, ns, label_set),
         "spec": {"scaleTargetRef": {"apiVersion": "apps/v1", "kind": "Deployment", "name": name},
                  "minReplicas": max(1, version.hardware.replicas_min),
                  "maxReplicas": max(1, version.hardware.replicas_max),
                  "metrics": [{"type": "Resource", "resource": {"name": "cpu", "target": {
                      "type": "Utilization", "averageUtilization": 70}}}]}},
        _network_policy(name, ns, label_set, selector, dep),
    ]
    if dep.monitoring.metrics:
        objects.append({"apiVersion": "monitoring.coreos.com/v1", "kind": "ServiceMonitor",
                        "metadata": _meta(name, ns, label_set),
                        "spec": {"selector": {"matchLabels": selector},
                                 "endpoints": [{"port": "metrics", "path": "/metrics", "interval": "30s"}]}})
    return objects


def _deployment(name: str, ns: str, label_set: dict[str, str], selector: dict[str, str],
                dep: ResolvedDeployment, version: ResolvedVersion, image: str) -> Object:
    hw = version.hardware
    limits = {"cpu": _quantity_cpu(hw.cpu_limit_millis), "memory": _quantity_memory(hw.memory_limit_bytes)}
    if hw.gpu:
        limits["nvidia.com/gpu"] = str(hw.gpu)
    env: list[Object] = [{"name": "MLOPS_IAC_SERVER_SETTINGS", "valueFrom": {
        "configMapKeyRef": {"name": name, "key": "server.json"}}}]
    if dep.auth == "key":
        env.append({"name": "MLOPS_IAC_API_KEY", "valueFrom": {
            "secretKeyRef": {"name": secret_name(dep), "key": "apiKey"}}})
    probe = {"httpGet": {"path": "/v2/health/ready", "port": "http"}}
    container = {
        "name": "server", "image": image, "imagePullPolicy": "Always",
        "args": ["--port", str(PORT)], "ports": [{"name": "http", "containerPort": PORT, "protocol": "TCP"},
                                                 *_metrics_ports(dep, {"containerPort": METRICS_PORT})],
        "env": env,
        "resources": {"requests": {"cpu": _quantity_cpu(hw.cpu_millis),
                                   "memory": _quantity_memory(hw.memory_bytes)}, "limits": limits},
        # Startup waits for the model to load and warm up; only then do liveness and readiness count.
        "startupProbe": {**probe, "periodSeconds": 2, "failureThreshold": 90},
        "readinessProbe": {**probe, "periodSeconds": 5, "failureThreshold": 3},
        "livenessProbe": {"httpGet": {"path": "/v2/health/live", "port": "http"}, "periodSeconds": 10,
                          "failureThreshold": 3},
        "securityContext": {"allowPrivilegeEscalation": False, "readOnlyRootFilesystem": True,
                            "runAsNonRoot": True, "runAsUser": UID, "runAsGroup": UID,
                            "capabilities": {"drop": ["ALL"]}, "seccompProfile": {"type": "RuntimeDefault"}},
        # /tmp is the pod's own in-memory emptyDir: the root filesystem is read-only.
        "volumeMounts": [{"name": "data", "mountPath": "/data"}, {"name": "tmp", "mountPath": "/tmp"}],  # noqa: S108
    }
    annotations = {f"checkov.io/skip{i + 1}": f"{check}={why}" for i, (check, why) in enumerate(SKIPS.items())}
    return {
        "apiVersion": "apps/v1", "kind": "Deployment", "metadata": _meta(name, ns, label_set, annotations=annotations),
        "spec": {
            "replicas": max(1, hw.replicas_min), "revisionHistoryLimit": 2,
            "selector": {"matchLabels": selector},
            "strategy": {"type": "RollingUpdate", "rollingUpdate": {"maxUnavailable": 0, "maxSurge": 1}},
            "template": {
                "metadata": {"labels": label_set, "annotations": annotations},
                "spec": {
                    "serviceAccountName": name, "automountServiceAccountToken": False,
                    "securityContext": {"runAsNonRoot": True, "runAsUser": UID, "runAsGroup": UID, "fsGroup": UID,
                                        "seccompProfile": {"type": "RuntimeDefault"}},
                    "topologySpreadConstraints": [{"maxSkew": 1, "topologyKey": "kubernetes.io/hostname",
                                                   "whenUnsatisfiable": "ScheduleAnyway",
                                                   "labelSelector": {"matchLabels": selector}}],
                    # SIGTERM drains requests in flight (25 s); Kubernetes waits this long.
                    "terminationGracePeriodSeconds": 30,
                    "containers": [container],
                    "volumes": [{"name": "data", "emptyDir": {}}, {"name": "tmp", "emptyDir": {"medium": "Memory"}}],
                },
            },
        },
    }


def _disruption_budget(name: str, ns: str, label_set: dict[str, str], selector: dict[str, str],
                       version: ResolvedVersion) -> Object:
    # One replica cannot promise availability during a drain: allow it to move instead of blocking.
    budget = {"minAvailable": 1} if version.hardware.replicas_min >= 2 else {"maxUnavailable": 1}
    return {"apiVersion": "policy/v1", "kind": "PodDisruptionBudget", "metadata": _meta(name, ns, label_set),
            "spec": {**budget, "selector": {"matchLabels": selector}}}


def _network_policy(name: str, ns: str, label_set: dict[str, str], selector: dict[str, str],
                    dep: ResolvedDeployment) -> Object:
    egress: list[Object] = [{"ports": [{"port": 53, "protocol": "UDP"}, {"port": 53, "protocol": "TCP"}]}]
    if isinstance(dep.monitoring.sink, HttpSink):  # the only traffic the server starts itself
        egress.append({"ports": [{"port": 443, "protocol": "TCP"}, {"port": 80, "protocol": "TCP"}]})
    return {"apiVersion": "networking.k8s.io/v1", "kind": "NetworkPolicy", "metadata": _meta(name, ns, label_set),
            "spec": {"podSelector": {"matchLabels": selector}, "policyTypes": ["Ingress", "Egress"],
                     "ingress": [{"ports": [{"port": PORT, "protocol": "TCP"},
                                            *_metrics_ports(dep, {"port": METRICS_PORT}, named=False)]}],
                     "egress": egress}}


def _metrics_ports(dep: ResolvedDeployment, port: Object, named: bool = True) -> list[Object]:
    """The metrics port, where Prometheus scrapes without the API key, when metrics are on."""
    if not dep.monitoring.metrics:
        return []
    return [{**({"name": "metrics"} if named else {}), **port, "protocol": "TCP"}]


def model_objects(project: str, target: KubernetesTarget, dep: ResolvedDeployment) -> list[Object]:
    """The stable Service of the model and, with a gateway, the HTTPRoute that splits traffic."""
    ns = target.namespace
    label_set = {k: v for k, v in labels(project, dep.model, dep.name, 0).items() if k != "app.kubernetes.io/version"}
    objects: list[Object] = [{
        "apiVersion": "v1", "kind": "Service", "metadata": _meta(dep.name, ns, label_set),
        "spec": {"type": "ClusterIP", "selector": {"app.kubernetes.io/name": dep.model,
                                                   "app.kubernetes.io/part-of": project},
                 "ports": [{"name": "http", "port": PORT, "targetPort": "http", "protocol": "TCP"}]}}]
    if target.gateway is not None:
        route: Object = {
            "parentRefs": [{"name": target.gateway.name, **({"namespace": target.gateway.namespace}
                                                           if target.gateway.namespace else {})}],
            "rules": [{"matches": [{"path": {"type": "PathPrefix", "value": f"/v2/models/{dep.model}"}}],
                       "backendRefs": [{"name": version_name(dep.model, v), "port": PORT, "weight": v.weight}
                                       for v in dep.versions]}]}
        if target.hostname:
            route["hostnames"] = [target.hostname]
        objects.append({"apiVersion": "gateway.networking.k8s.io/v1", "kind": "HTTPRoute",
                        "metadata": _meta(dep.name, ns, label_set), "spec": route})
    if dep.monitoring.metrics:
        objects += monitoring_objects(ns, label_set, dep)
    return objects


def series_selector(namespace: str, model: str) -> str:
    """The deployment's series as the ServiceMonitor labels them (namespace, the version Services)."""
    return f'namespace="{namespace}",service=~"{model}-v[0-9]+-[0-9a-f]{{8}}"'


def monitoring_objects(ns: str, label_set: dict[str, str], dep: ResolvedDeployment) -> list[Object]:
    """Alerts (prometheus-operator PrometheusRule) and a dashboard for Grafana's sidecar."""
    from .monitoring.alerts import dashboard_json, rule_groups

    selector = series_selector(ns, dep.model)
    return [
        {"apiVersion": "monitoring.coreos.com/v1", "kind": "PrometheusRule", "metadata": _meta(dep.name, ns, label_set),
         "spec": {"groups": rule_groups(dep, selector)}},
        {"apiVersion": "v1", "kind": "ConfigMap",
         "metadata": _meta(f"{dep.name}-dashboard", ns, {**label_set, "grafana_dashboard": "1"}),
         "data": {f"{dep.name}.json": dashboard_json(dep, selector)}},
    ]
