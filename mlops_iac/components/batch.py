"""The Kubernetes component of a batch deployment: the objects of `batch_manifests.py`, so
`pulumi up` and `mlops-iac render` create the same Job (or CronJob)."""

from __future__ import annotations

from dataclasses import dataclass

import pulumi
import pulumi_kubernetes as k8s

from ..batch_manifests import batch_objects
from ..manifests import version_name
from ..pinned import BuiltDeployment
from ..spec.targets import KubernetesTarget
from .kubernetes import create

JOBS = {"Job": k8s.batch.v1.Job, "CronJob": k8s.batch.v1.CronJob}


@dataclass
class BatchJobArgs:
    project: str
    target: KubernetesTarget
    deployment: BuiltDeployment


class BatchJob(pulumi.ComponentResource):
    """One batch deployment: its ServiceAccount, settings, NetworkPolicy and Job or CronJob."""

    def __init__(self, name: str, args: BatchJobArgs, opts: pulumi.ResourceOptions | None = None) -> None:
        super().__init__("mlops:k8s:BatchJob", name, None, opts)
        (version,) = args.deployment.versions
        objects = batch_objects(args.project, args.target, args.deployment, version, version.image, version.onnx_digest)
        child = pulumi.ResourceOptions(parent=self)
        self.resources: dict[str, pulumi.CustomResource] = {}
        for obj in objects:
            kind = JOBS.get(obj["kind"])
            if kind is None:
                self.resources[obj["kind"]] = create(obj, child)
            else:
                self.resources[obj["kind"]] = kind(
                    f"{obj['metadata']['name']}-{obj['kind'].lower()}",
                    opts=child,
                    metadata=obj["metadata"],
                    spec=obj["spec"],
                )
        self.name = version_name(args.deployment.model, version)
        self.register_outputs(
            {
                "name": self.name,
                "image": version.image,
                "kind": "CronJob" if args.deployment.batch and args.deployment.batch.schedule else "Job",
            }
        )
