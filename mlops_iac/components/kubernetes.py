"""Kubernetes components (pulumi-kubernetes). They build the objects of `manifests.py`, so
`pulumi up` and `mlops-iac render --format yaml` create exactly the same things."""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

import pulumi
import pulumi_kubernetes as k8s

from ..manifests import model_objects, secret_name, version_name, version_objects
from ..resolve import ResolvedDeployment, ResolvedVersion
from ..spec.targets import KubernetesTarget

TYPED = {
    ("v1", "ServiceAccount"): k8s.core.v1.ServiceAccount,
    ("v1", "ConfigMap"): k8s.core.v1.ConfigMap,
    ("v1", "Service"): k8s.core.v1.Service,
    ("v1", "Secret"): k8s.core.v1.Secret,
    ("apps/v1", "Deployment"): k8s.apps.v1.Deployment,
    ("policy/v1", "PodDisruptionBudget"): k8s.policy.v1.PodDisruptionBudget,
    ("autoscaling/v2", "HorizontalPodAutoscaler"): k8s.autoscaling.v2.HorizontalPodAutoscaler,
    ("networking.k8s.io/v1", "NetworkPolicy"): k8s.networking.v1.NetworkPolicy,
}


def _snake(key: str) -> str:
    return re.sub(r"(?<!^)(?=[A-Z])", "_", key).lower()


def create(obj: dict[str, Any], opts: pulumi.ResourceOptions) -> pulumi.CustomResource:
    """A typed resource for a core kind, a CustomResource for the rest (ServiceMonitor, HTTPRoute)."""
    name = f"{obj['metadata']['name']}-{obj['kind'].lower()}"
    kind = TYPED.get((obj["apiVersion"], obj["kind"]))
    fields = {_snake(k): v for k, v in obj.items() if k not in ("apiVersion", "kind")}
    if kind is not None:
        return kind(name, **fields, opts=opts)  # type: ignore[no-any-return]
    return k8s.apiextensions.CustomResource(name, api_version=obj["apiVersion"], kind=obj["kind"],
                                            opts=opts, **fields)


@dataclass
class ModelServerArgs:
    """One model version of one deployment on one cluster."""

    project: str
    target: KubernetesTarget
    deployment: ResolvedDeployment
    version: ResolvedVersion


class ModelServer(pulumi.ComponentResource):
    """Everything one model version runs with, named with its version and digest."""

    def __init__(self, name: str, args: ModelServerArgs, opts: pulumi.ResourceOptions | None = None) -> None:
        super().__init__("mlops:k8s:ModelServer", name, None, opts)
        assert args.version.image is not None and args.version.onnx_digest is not None
        objects = version_objects(args.project, args.target, args.deployment, args.version,
                                  args.version.image, args.version.onnx_digest)
        child = pulumi.ResourceOptions(parent=self)
        self.resources = {o["kind"]: create(o, child) for o in objects}
        self.name = version_name(args.deployment.model, args.version)
        self.register_outputs({"name": self.name, "image": args.version.image,
                               "service": f"{self.name}.{args.target.namespace}.svc"})


@dataclass
class ModelEndpointArgs:
    """The stable endpoint of a model's deployment: its Service, the traffic split, the API key."""

    project: str
    target: KubernetesTarget
    deployment: ResolvedDeployment
    api_key: pulumi.Input[str] | None = None


class ModelEndpoint(pulumi.ComponentResource):
    def __init__(self, name: str, args: ModelEndpointArgs, opts: pulumi.ResourceOptions | None = None) -> None:
        super().__init__("mlops:k8s:ModelEndpoint", name, None, opts)
        child = pulumi.ResourceOptions(parent=self)
        self.resources = {o["kind"]: create(o, child) for o in model_objects(args.project, args.target,
                                                                              args.deployment)}
        if args.deployment.auth == "key":
            if args.api_key is None:
                raise ValueError(f"deployment {args.deployment.name} has auth: key; set the key with "
                                 "`pulumi config set --secret mlops:apiKey <key>`")
            self.resources["Secret"] = k8s.core.v1.Secret(
                f"{secret_name(args.deployment)}-secret", opts=child, type="Opaque",
                metadata={"name": secret_name(args.deployment), "namespace": args.target.namespace},
                string_data={"apiKey": pulumi.Output.secret(args.api_key)})
        self.register_outputs({"service": f"{args.deployment.name}.{args.target.namespace}.svc",
                               "weights": {str(v.number): v.weight for v in args.deployment.versions}})
