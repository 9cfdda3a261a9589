"""The Kubernetes objects of a deployment, as plain data. Pure.

One source of truth for both ways a user deploys: the Pulumi components create typed
resources from these objects, and `mlops-iac render --format yaml` prints them for GitOps
and offline checks. Each model version gets its own, immutable set of objects, named with
the version and the artifact's digest, so a new version adds objects and never mutates the
old ones; traffic moves between them through a Gateway API HTTPRoute.

Objects that need CRDs (HTTPRoute, ServiceMonitor, PrometheusRule) are made only when the
target declares what provides them (`gateway:`, `monitoring.prometheusOperator.enabled`), so
a first `pulumi up` on a bare cluster succeeds; `model_manifests.skipped()` says what was left
out and why. The objects spanning a model's versions (Service, HTTPRoute, alerts) are in
`model_manifests.py`.
"""

from __future__ import annotations

import hashlib
from typing import Any

from .artifacts import canonical_json
from .contract import API_KEY_ENV, GRPC_PORT, METRICS_PORT, PORT, SETTINGS_ENV, UID
from .pinned import PinnedDeployment, PinnedVersion
from .plan import collection_config
from .serving.config import ModelConfig, ServerConfig, workers_for
from .spec.monitoring import HttpSink
from .spec.targets import KubernetesTarget

# The server drains requests in flight this long on SIGTERM (serving/run.py's DRAIN_SECONDS).
DRAIN_SECONDS = 25
# Before SIGTERM, the pod keeps serving while Endpoints, kube-proxy and the gateway forget it.
PRESTOP_SECONDS = 10
GRACE_SECONDS = PRESTOP_SECONDS + DRAIN_SECONDS + 5
VERSION_HEADER = "x-model-version"
API_KEY_VERSION = "mlops-iac.dev/api-key-version"
POD_SECURITY = {f"pod-security.kubernetes.io/{mode}": "restricted" for mode in ("enforce", "audit", "warn")}
Object = dict[str, Any]


def grpc_service_port() -> Object:
    """A Service's gRPC port. `kubernetes.io/h2c` (HTTP/2 without TLS) tells gateways and meshes
    how to speak to it; a new dict each time, as for the security contexts below."""
    return {
        "name": "grpc",
        "port": GRPC_PORT,
        "targetPort": "grpc",
        "protocol": "TCP",
        "appProtocol": "kubernetes.io/h2c",
    }


def pod_security_context() -> Object:
    """Pod Security `restricted`, for every pod we render (servers and batch Jobs alike); a new
    dict each time, so no two objects share (and could mutate) one."""
    return {
        "runAsNonRoot": True,
        "runAsUser": UID,
        "runAsGroup": UID,
        "fsGroup": UID,
        "seccompProfile": {"type": "RuntimeDefault"},
    }


def container_security() -> Object:
    return {
        "allowPrivilegeEscalation": False,
        "readOnlyRootFilesystem": True,
        "runAsNonRoot": True,
        "runAsUser": UID,
        "runAsGroup": UID,
        "capabilities": {"drop": ["ALL"]},
        "seccompProfile": {"type": "RuntimeDefault"},
    }


# Beside each object the checks it does not pass, with the reason: checkov reads these.
SKIPS = {
    "CKV_K8S_35": "the API key reaches the server as an environment variable from a Secret; the "
    "server reads no files besides its model",
}


def version_name(model: str, version: PinnedVersion) -> str:
    """`iris-v3-8f03a2cb`: the version and the artifact's digest, so it names one content."""
    return f"{model}-v{version.number}-{version.digest.removeprefix('sha256:')[:8]}"


def network_name(dep: PinnedDeployment) -> str | None:
    """A Docker deployment's own network, where it has a shadow to mirror to; else None (the
    engine's default). The stack creates it and the review lists it."""
    return f"{dep.name}-mirror" if dep.shadow else None


def labels(project: str, model: str, instance: str, version: int) -> dict[str, str]:
    return {
        "app.kubernetes.io/name": model,
        "app.kubernetes.io/instance": instance,
        "app.kubernetes.io/version": str(version),
        "app.kubernetes.io/component": "model-server",
        "app.kubernetes.io/part-of": project,
        "app.kubernetes.io/managed-by": "mlops-iac",
    }


def meta(name: str, namespace: str, label_set: dict[str, str], **extra: Any) -> Object:
    return {"name": name, "namespace": namespace, "labels": label_set, **extra}


def quantity_cpu(millis: int) -> str:
    return f"{millis}m"


def quantity_memory(size: int) -> str:
    return f"{-(-size // 2**20)}Mi"


def server_settings(dep: PinnedDeployment, version: PinnedVersion, onnx_digest: str) -> ServerConfig:
    """The server's settings for one version of a deployment (the model is in the image)."""
    mon, hw = dep.monitoring, version.hardware
    return ServerConfig(
        deployment=dep.name,
        auth=dep.auth == "key",
        metrics=mon.metrics,
        collection=collection_config(mon, "/data/"),
        metrics_port=METRICS_PORT if mon.metrics else None,
        grpc_port=GRPC_PORT,
        workers=workers_for(hw.cpu_millis, hw.threads, collection_config(mon, "/data/")),
        models=(
            ModelConfig(
                name=dep.model,
                version=version.number,
                path="/app/model/model.onnx",
                digest=onnx_digest,
                threads=hw.threads,
                max_batch_size=hw.max_batch_size,
                max_delay_ms=hw.max_delay_ms,
                gpu=hw.gpu > 0,
            ),
        ),
    )


def secret_name(dep: PinnedDeployment) -> str:
    return f"{dep.name}-api-key"


def operator_labels(target: KubernetesTarget, dep: PinnedDeployment) -> dict[str, str] | None:
    """The labels prometheus-operator selects on, or None where its CRDs are not declared."""
    operator = target.monitoring.prometheus_operator
    return dict(operator.labels) if operator.enabled and dep.monitoring.metrics else None


def namespace_objects(project: str, target: KubernetesTarget) -> list[Object]:
    """The namespace, labelled so that Kubernetes admits only `restricted` pods into it."""
    if not target.creates_namespace:
        return []
    return [
        {
            "apiVersion": "v1",
            "kind": "Namespace",
            "metadata": {
                "name": target.namespace_name,
                "labels": {
                    "app.kubernetes.io/part-of": project,
                    "app.kubernetes.io/managed-by": "mlops-iac",
                    **POD_SECURITY,
                },
            },
        }
    ]


def version_objects(
    project: str, target: KubernetesTarget, dep: PinnedDeployment, version: PinnedVersion, image: str, onnx_digest: str
) -> list[Object]:
    """ServiceAccount, ConfigMap, Deployment, Service, PodDisruptionBudget, HPA, NetworkPolicy,
    and a ServiceMonitor with prometheus-operator: everything one version runs with."""
    name, ns = version_name(dep.model, version), target.namespace_name
    label_set = labels(project, dep.model, name, version.number)
    selector = {"app.kubernetes.io/name": dep.model, "app.kubernetes.io/instance": name}
    settings = canonical_json(server_settings(dep, version, onnx_digest).model_dump(mode="json"))
    # Named by content and immutable: changed settings make a new ConfigMap and roll the pods,
    # never a mixed fleet of old pods reading new settings.
    settings_name = f"{name}-{hashlib.sha256(settings.encode()).hexdigest()[:8]}"
    ports = [{"name": "http", "port": PORT, "targetPort": "http", "protocol": "TCP"}, grpc_service_port()]
    if dep.monitoring.metrics:
        ports.append({"name": "metrics", "port": METRICS_PORT, "targetPort": "metrics", "protocol": "TCP"})
    objects: list[Object] = [
        {
            "apiVersion": "v1",
            "kind": "ServiceAccount",
            "metadata": meta(name, ns, label_set),
            "automountServiceAccountToken": False,
        },
        {
            "apiVersion": "v1",
            "kind": "ConfigMap",
            "metadata": meta(settings_name, ns, label_set),
            "immutable": True,
            "data": {"server.json": settings},
        },
        _deployment(name, ns, label_set, selector, dep, version, image, settings_name, target),
        {
            "apiVersion": "v1",
            "kind": "Service",
            "metadata": meta(name, ns, label_set),
            "spec": {"type": "ClusterIP", "selector": selector, "ports": ports},
        },
        _disruption_budget(name, ns, label_set, selector, version),
        {
            "apiVersion": "autoscaling/v2",
            "kind": "HorizontalPodAutoscaler",
            "metadata": meta(name, ns, label_set),
            "spec": {
                "scaleTargetRef": {"apiVersion": "apps/v1", "kind": "Deployment", "name": name},
                "minReplicas": max(1, version.hardware.replicas_min),
                "maxReplicas": max(1, version.hardware.replicas_max),
                "metrics": [
                    {
                        "type": "Resource",
                        "resource": {"name": "cpu", "target": {"type": "Utilization", "averageUtilization": 70}},
                    }
                ],
            },
        },
        _network_policy(name, ns, label_set, selector, dep, target),
    ]
    operator = operator_labels(target, dep)
    if operator is not None:
        objects.append(
            {
                "apiVersion": "monitoring.coreos.com/v1",
                "kind": "ServiceMonitor",
                "metadata": meta(name, ns, {**label_set, **operator}),
                "spec": {
                    "selector": {"matchLabels": selector},
                    "endpoints": [{"port": "metrics", "path": "/metrics", "interval": "30s"}],
                },
            }
        )
    return objects


def _container(dep: PinnedDeployment, version: PinnedVersion, image: str, settings_name: str) -> Object:
    hw = version.hardware
    limits = {"cpu": quantity_cpu(hw.cpu_limit_millis), "memory": quantity_memory(hw.memory_limit_bytes)}
    if hw.gpu:
        limits["nvidia.com/gpu"] = str(hw.gpu)
    env: list[Object] = [
        {"name": SETTINGS_ENV, "valueFrom": {"configMapKeyRef": {"name": settings_name, "key": "server.json"}}}
    ]
    if dep.auth == "key":
        env.append({"name": API_KEY_ENV, "valueFrom": {"secretKeyRef": {"name": secret_name(dep), "key": "apiKey"}}})
    probe = {"httpGet": {"path": "/v2/health/ready", "port": "http"}}
    ports = [
        {"name": "http", "containerPort": PORT, "protocol": "TCP"},
        {"name": "grpc", "containerPort": GRPC_PORT, "protocol": "TCP"},
    ]
    if dep.monitoring.metrics:
        ports.append({"name": "metrics", "containerPort": METRICS_PORT, "protocol": "TCP"})
    return {
        # The image is pinned by digest: what is on the node is what was asked for.
        "name": "server",
        "image": image,
        "imagePullPolicy": "IfNotPresent",
        "args": ["--port", str(PORT)],
        "ports": ports,
        "env": env,
        "resources": {
            "requests": {"cpu": quantity_cpu(hw.cpu_millis), "memory": quantity_memory(hw.memory_bytes)},
            "limits": limits,
        },
        # Startup waits for the model to load and warm up; only then do liveness and readiness count.
        "startupProbe": {**probe, "periodSeconds": 2, "failureThreshold": 90},
        "readinessProbe": {**probe, "periodSeconds": 5, "failureThreshold": 3},
        "livenessProbe": {
            "httpGet": {"path": "/v2/health/live", "port": "http"},
            "periodSeconds": 10,
            "failureThreshold": 3,
        },
        # Keep serving while the pod is taken out of Services and routes; SIGTERM (and the drain) after.
        "lifecycle": {
            "preStop": {
                "exec": {"command": ["/opt/venv/bin/python", "-c", f"import time; time.sleep({PRESTOP_SECONDS})"]}
            }
        },
        "securityContext": container_security(),
        # /tmp is the pod's own in-memory emptyDir: the root filesystem is read-only.
        "volumeMounts": [{"name": "data", "mountPath": "/data"}, {"name": "tmp", "mountPath": "/tmp"}],  # noqa: S108
    }


def _deployment(
    name: str,
    ns: str,
    label_set: dict[str, str],
    selector: dict[str, str],
    dep: PinnedDeployment,
    version: PinnedVersion,
    image: str,
    settings_name: str,
    target: KubernetesTarget,
) -> Object:
    annotations = {f"checkov.io/skip{i + 1}": f"{check}={why}" for i, (check, why) in enumerate(SKIPS.items())}
    pod: Object = {
        "serviceAccountName": name,
        "automountServiceAccountToken": False,
        "securityContext": pod_security_context(),
        "topologySpreadConstraints": [
            {
                "maxSkew": 1,
                "topologyKey": "kubernetes.io/hostname",
                "whenUnsatisfiable": "ScheduleAnyway",
                "labelSelector": {"matchLabels": selector},
            }
        ],
        # preStop, then SIGTERM and the server's drain, with a margin: then Kubernetes kills.
        "terminationGracePeriodSeconds": GRACE_SECONDS,
        "containers": [_container(dep, version, image, settings_name)],
        "volumes": [{"name": "data", "emptyDir": {}}, {"name": "tmp", "emptyDir": {"medium": "Memory"}}],
    }
    if target.image_pull_secrets:
        pod["imagePullSecrets"] = [{"name": s} for s in target.image_pull_secrets]
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": meta(name, ns, label_set, annotations=annotations),
        # No `replicas`: the HPA owns the count, and a value here would reset it on every update.
        "spec": {
            "revisionHistoryLimit": 2,
            "selector": {"matchLabels": selector},
            "strategy": {"type": "RollingUpdate", "rollingUpdate": {"maxUnavailable": 0, "maxSurge": 1}},
            "template": {"metadata": {"labels": label_set, "annotations": dict(annotations)}, "spec": pod},
        },
    }


def _disruption_budget(
    name: str, ns: str, label_set: dict[str, str], selector: dict[str, str], version: PinnedVersion
) -> Object:
    # One replica cannot promise availability during a drain: allow it to move instead of blocking.
    budget = {"minAvailable": 1} if version.hardware.replicas_min >= 2 else {"maxUnavailable": 1}
    return {
        "apiVersion": "policy/v1",
        "kind": "PodDisruptionBudget",
        "metadata": meta(name, ns, label_set),
        "spec": {**budget, "selector": {"matchLabels": selector}},
    }


def _network_policy(
    name: str,
    ns: str,
    label_set: dict[str, str],
    selector: dict[str, str],
    dep: PinnedDeployment,
    target: KubernetesTarget,
) -> Object:
    egress: list[Object] = [{"ports": [{"port": 53, "protocol": "UDP"}, {"port": 53, "protocol": "TCP"}]}]
    if isinstance(dep.monitoring.sink, HttpSink):  # the only traffic the server starts itself
        egress.append({"ports": [{"port": 443, "protocol": "TCP"}, {"port": 80, "protocol": "TCP"}]})
    ingress: list[Object] = [{"ports": [{"port": PORT, "protocol": "TCP"}, {"port": GRPC_PORT, "protocol": "TCP"}]}]
    if dep.monitoring.metrics:  # metrics answer without the key: only Prometheus's namespace may ask
        ingress.append(
            {
                "from": [
                    {"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": target.monitoring.namespace}}}
                ],
                "ports": [{"port": METRICS_PORT, "protocol": "TCP"}],
            }
        )
    return {
        "apiVersion": "networking.k8s.io/v1",
        "kind": "NetworkPolicy",
        "metadata": meta(name, ns, label_set),
        "spec": {
            "podSelector": {"matchLabels": selector},
            "policyTypes": ["Ingress", "Egress"],
            "ingress": ingress,
            "egress": egress,
        },
    }
