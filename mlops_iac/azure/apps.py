"""Azure Container Apps: one app per deployment, a revision per version, traffic by revision weight."""

from __future__ import annotations

import math
from typing import Any

from ..contract import API_KEY_ENV, METRICS_PORT, PORT, SETTINGS_ENV
from ..errors import PlanError
from ..manifests import GRACE_SECONDS, version_name
from ..pinned import BuiltDeployment, PinnedDeployment, PinnedVersion
from ..spec.azure import ContainerAppsTarget
from .common import ACA_CPU_STEP, ACA_GIB_PER_CPU, ACA_MAX_CPU, LIVE, READY, Object, registry_server, settings_json


def revision_suffix(dep: PinnedDeployment, version: PinnedVersion) -> str:
    """`v2-8e247c07`: the revision is named `<app>--<suffix>`, one per version and content."""
    return version_name(dep.model, version).removeprefix(f"{dep.model}-")


def app_resources(dep: PinnedDeployment, version: PinnedVersion) -> tuple[float, str]:
    """Cores and memory of a replica: the smallest allowed pair that covers the limits."""
    hw = version.hardware
    need = max(hw.cpu_limit_millis / 1000, hw.memory_limit_bytes / (ACA_GIB_PER_CPU * 2**30))
    cores = math.ceil(need / ACA_CPU_STEP - 1e-9) * ACA_CPU_STEP
    if cores > ACA_MAX_CPU:
        raise PlanError(
            f"{dep.name} v{version.number}: {hw.cpu_limit_millis}m CPU and "
            f"{hw.memory_limit_bytes // 2**20}Mi memory need {cores:g} cores on Container Apps, "
            f"above its {ACA_MAX_CPU:g} cores (8Gi) per replica; lower hardware.cpu/memory"
        )
    return cores, f"{cores * ACA_GIB_PER_CPU:g}Gi"


def _probes(port: int) -> list[Object]:
    """Startup waits for the model to load (Container Apps allow 10 failures at most)."""
    ready = {"path": READY, "port": port, "scheme": "HTTP"}
    return [
        {
            "type": "Startup",
            "httpGet": ready,
            "initialDelaySeconds": 5,
            "periodSeconds": 10,
            "failureThreshold": 10,
            "timeoutSeconds": 3,
        },
        {"type": "Readiness", "httpGet": ready, "periodSeconds": 5, "failureThreshold": 3, "timeoutSeconds": 3},
        {
            "type": "Liveness",
            "httpGet": {"path": LIVE, "port": port, "scheme": "HTTP"},
            "periodSeconds": 10,
            "failureThreshold": 3,
            "timeoutSeconds": 3,
        },
    ]


def container_app(
    project: str,
    target: ContainerAppsTarget,
    dep: BuiltDeployment,
    *,
    api_key: Any = None,
    registry: tuple[Any, Any] | None = None,
) -> Object:
    """The ContainerApp's arguments: `api_key` and the registry's (username, password) are
    the stack's secrets (Pulumi outputs), or stand-ins when the properties are only printed."""
    newest = dep.versions[-1]
    cores, memory = app_resources(dep, newest)
    secrets: list[Object] = []
    env: list[Object] = [{"name": SETTINGS_ENV, "value": settings_json(dep, newest)}]
    if dep.auth == "key":
        secrets.append({"name": "api-key", "value": api_key})
        env.append({"name": API_KEY_ENV, "secretRef": "api-key"})
    ingress: Object = {
        "external": target.external,
        "targetPort": PORT,
        "transport": "http",
        "allowInsecure": False,
        "traffic": [
            {"revisionName": f"{dep.name}--{revision_suffix(dep, v)}", "weight": v.weight}
            for v in dep.versions
            if v.number not in dep.shadow
        ],
    }
    if dep.monitoring.metrics:  # only inside the environment: metrics answer without the key
        ingress["additionalPortMappings"] = [{"external": False, "targetPort": METRICS_PORT}]
    configuration: Object = {"activeRevisionsMode": "Multiple", "ingress": ingress, "secrets": secrets}
    if registry is not None:
        secrets.append({"name": "registry-password", "value": registry[1]})
        configuration["registries"] = [
            {"server": registry_server(newest.image), "username": registry[0], "passwordSecretRef": "registry-password"}
        ]
    hw = newest.hardware
    args: Object = {
        "containerAppName": dep.name,
        "resourceGroupName": target.resource_group,
        "location": target.location,
        "managedEnvironmentId": target.environment,
        "configuration": configuration,
        "tags": {"mlops-iac-project": project, "mlops-iac-deployment": dep.name},
        "template": {
            "revisionSuffix": revision_suffix(dep, newest),
            "terminationGracePeriodSeconds": GRACE_SECONDS,
            "containers": [
                {
                    "name": "server",
                    "image": newest.image,
                    "args": ["--port", str(PORT)],
                    "env": env,
                    "resources": {"cpu": cores, "memory": memory},
                    "probes": _probes(PORT),
                    "volumeMounts": [{"volumeName": "data", "mountPath": "/data"}],
                }
            ],
            "volumes": [{"name": "data", "storageType": "EmptyDir"}],
            "scale": {
                "minReplicas": hw.replicas_min,
                "maxReplicas": max(1, hw.replicas_max),
                "rules": [
                    {"name": "http-concurrency", "http": {"metadata": {"concurrentRequests": str(target.concurrency)}}}
                ],
            },
        },
    }
    if target.workload_profile is not None:
        args["workloadProfileName"] = target.workload_profile
    return args
