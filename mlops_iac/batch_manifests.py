"""The Kubernetes objects of a batch deployment (`kind: batch`), as plain data. Pure.

An indexed Job (or a CronJob of one) running the server's own image with `python -m
mlops_iac.scoring`: the same pinned ONNX file and handler, the same security context and
resources as the server. `parallelism` pods each score every Nth part (their
JOB_COMPLETION_INDEX); a pod restarted after a failure resumes from the manifest, which
never lists a part that is not completely written.
"""

from __future__ import annotations

from typing import Any

from .artifacts import canonical_json
from .contract import SETTINGS_ENV
from .manifests import (
    Object,
    container_security,
    labels,
    meta,
    pod_security_context,
    quantity_cpu,
    quantity_memory,
    server_settings,
)
from .pinned import PinnedDeployment, PinnedVersion
from .spec.batch import Batch
from .spec.targets import KubernetesTarget

DATA = "/data"
PYTHON = "/opt/venv/bin/python"


def scoring_args(batch: Batch, shards: bool = True) -> list[str]:
    """The arguments of `python -m mlops_iac.scoring` in the image (paths under /data)."""
    args = ["--config", "/app/server.json"]
    for pattern in batch.input:
        args += ["--input", _under_data(pattern)]
    args += [
        "--output",
        _under_data(batch.output),
        "--batch-size",
        str(batch.batch_size),
        "--part-rows",
        str(batch.part_rows),
        "--error-threshold",
        str(batch.error_threshold),
        "--format",
        batch.format,
        "--resume",
    ]
    if shards:
        args += ["--shards", str(batch.parallelism)]
    return args


def _under_data(path: str) -> str:
    return path if path.startswith("/") else f"{DATA}/{path}"


def batch_objects(
    project: str, target: KubernetesTarget, dep: PinnedDeployment, version: PinnedVersion, image: str, onnx_digest: str
) -> list[Object]:
    """ServiceAccount, ConfigMap, NetworkPolicy and the Job (or CronJob) of one batch deployment."""
    assert dep.batch is not None  # only a `kind: batch` deployment has a Job
    # Named by the deployment (one version each), never by the version: the online deployment
    # of the same version on this target owns the version's names.
    name, ns = dep.name, target.namespace_name
    label_set = {**labels(project, dep.model, name, version.number), "app.kubernetes.io/component": "batch-scoring"}
    settings = canonical_json(server_settings(dep, version, onnx_digest).model_dump(mode="json"))
    job = _job_spec(name, label_set, dep.batch, version, image)
    workload: Object = (
        {
            "apiVersion": "batch/v1",
            "kind": "CronJob",
            "metadata": meta(name, ns, label_set),
            "spec": {
                "schedule": dep.batch.schedule,
                "concurrencyPolicy": "Forbid",
                "successfulJobsHistoryLimit": 3,
                "failedJobsHistoryLimit": 3,
                "jobTemplate": {"metadata": {"labels": label_set}, "spec": job},
            },
        }
        if dep.batch.schedule
        else {"apiVersion": "batch/v1", "kind": "Job", "metadata": meta(name, ns, label_set), "spec": job}
    )
    return [
        {
            "apiVersion": "v1",
            "kind": "ServiceAccount",
            "metadata": meta(name, ns, label_set),
            "automountServiceAccountToken": False,
        },
        {
            "apiVersion": "v1",
            "kind": "ConfigMap",
            "metadata": meta(name, ns, label_set),
            "data": {"server.json": settings},
        },
        workload,
        # A batch pod answers nobody and calls nobody: its rows are on its volume.
        {
            "apiVersion": "networking.k8s.io/v1",
            "kind": "NetworkPolicy",
            "metadata": meta(name, ns, label_set),
            "spec": {
                "podSelector": {
                    "matchLabels": {"app.kubernetes.io/instance": name, "app.kubernetes.io/component": "batch-scoring"}
                },
                "policyTypes": ["Ingress", "Egress"],
                "ingress": [],
                "egress": [{"ports": [{"port": 53, "protocol": "UDP"}, {"port": 53, "protocol": "TCP"}]}],
            },
        },
    ]


def _job_spec(name: str, label_set: dict[str, str], batch: Batch, version: PinnedVersion, image: str) -> Object:
    hw = version.hardware
    limits = {"cpu": quantity_cpu(hw.cpu_limit_millis), "memory": quantity_memory(hw.memory_limit_bytes)}
    container: dict[str, Any] = {
        "name": "score",
        "image": image,
        "imagePullPolicy": "IfNotPresent",  # pinned by digest
        "command": [PYTHON, "-m", "mlops_iac.scoring"],
        "args": scoring_args(batch),
        "env": [{"name": SETTINGS_ENV, "valueFrom": {"configMapKeyRef": {"name": name, "key": "server.json"}}}],
        "resources": {
            "requests": {"cpu": quantity_cpu(hw.cpu_millis), "memory": quantity_memory(hw.memory_bytes)},
            "limits": limits,
        },
        "securityContext": container_security(),
        "volumeMounts": [{"name": "data", "mountPath": DATA}, {"name": "tmp", "mountPath": "/tmp"}],  # noqa: S108
    }
    data: Object = (
        {"name": "data", "persistentVolumeClaim": {"claimName": batch.volume_claim}}
        if batch.volume_claim
        else {"name": "data", "emptyDir": {}}
    )
    return {
        "completionMode": "Indexed",
        "completions": batch.parallelism,
        "parallelism": batch.parallelism,
        # A retried pod resumes from the manifest: only unfinished parts are scored again.
        "backoffLimit": 3 * batch.parallelism,
        "ttlSecondsAfterFinished": 7 * 86400,
        "template": {
            "metadata": {"labels": label_set},
            "spec": {
                "serviceAccountName": name,
                "automountServiceAccountToken": False,
                "restartPolicy": "OnFailure",
                "securityContext": pod_security_context(),
                "containers": [container],
                "volumes": [data, {"name": "tmp", "emptyDir": {"medium": "Memory"}}],
            },
        },
    }
