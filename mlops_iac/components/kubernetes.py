"""Kubernetes components (pulumi-kubernetes). They build the objects of `manifests.py`, so
`pulumi up` and `mlops-iac render --format yaml` create exactly the same things (plus the
API key's Secret, which render leaves to the user)."""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any

import pulumi
import pulumi_kubernetes as k8s

from ..manifests import API_KEY_VERSION, namespace_objects, secret_name, version_name, version_objects
from ..model_manifests import model_objects
from ..pinned import BuiltDeployment, BuiltVersion
from ..spec.targets import KubernetesTarget

TYPED = {
    ("v1", "Namespace"): k8s.core.v1.Namespace,
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
        return kind(name, **fields, opts=opts)  # type: ignore[no-any-return, unused-ignore]
    return k8s.apiextensions.CustomResource(name, api_version=obj["apiVersion"], kind=obj["kind"], opts=opts, **fields)


@dataclass
class ClusterNamespaceArgs:
    project: str
    target: KubernetesTarget


class ClusterNamespace(pulumi.ComponentResource):
    """The target's namespace, labelled for Pod Security `restricted`, unless it exists already."""

    def __init__(self, name: str, args: ClusterNamespaceArgs, opts: pulumi.ResourceOptions | None = None) -> None:
        super().__init__("mlops:k8s:Namespace", name, None, opts)
        child = pulumi.ResourceOptions(parent=self)
        self.resources = {o["kind"]: create(o, child) for o in namespace_objects(args.project, args.target)}
        self.register_outputs({"namespace": args.target.namespace_name})


@dataclass
class ApiKeyArgs:
    target: KubernetesTarget
    deployment: BuiltDeployment
    api_key: pulumi.Input[str]


class ApiKey(pulumi.ComponentResource):
    """The deployment's API key as a Secret. Its resourceVersion, which changes with every update
    of the Secret, annotates the pods, so rotating the key rolls them."""

    def __init__(self, name: str, args: ApiKeyArgs, opts: pulumi.ResourceOptions | None = None) -> None:
        super().__init__("mlops:k8s:ApiKey", name, None, opts)
        self.secret = k8s.core.v1.Secret(
            f"{secret_name(args.deployment)}-secret",
            opts=pulumi.ResourceOptions(parent=self),
            type="Opaque",
            metadata={"name": secret_name(args.deployment), "namespace": args.target.namespace_name},
            string_data={"apiKey": pulumi.Output.secret(args.api_key)},
        )
        self.version: pulumi.Output[str] = self.secret.metadata.apply(
            lambda meta: (meta.resource_version if meta else None) or ""
        )
        self.register_outputs({"secret": secret_name(args.deployment)})


@dataclass
class ModelServerArgs:
    """One model version of one deployment on one cluster."""

    project: str
    target: KubernetesTarget
    deployment: BuiltDeployment
    version: BuiltVersion
    api_key_version: pulumi.Input[str] | None = None  # rolls the pods when the key's Secret changes


class ModelServer(pulumi.ComponentResource):
    """Everything one model version runs with, named with its version and digest."""

    def __init__(self, name: str, args: ModelServerArgs, opts: pulumi.ResourceOptions | None = None) -> None:
        super().__init__("mlops:k8s:ModelServer", name, None, opts)
        objects = version_objects(
            args.project, args.target, args.deployment, args.version, args.version.image, args.version.onnx_digest
        )
        if args.api_key_version is not None:
            deployment = next(o for o in objects if o["kind"] == "Deployment")
            deployment["spec"]["template"]["metadata"]["annotations"][API_KEY_VERSION] = args.api_key_version
        child = pulumi.ResourceOptions(parent=self)
        self.resources = {o["kind"]: create(o, child) for o in objects}
        self.name = version_name(args.deployment.model, args.version)
        self.register_outputs(
            {"name": self.name, "image": args.version.image, "service": f"{self.name}.{args.target.namespace_name}.svc"}
        )


@dataclass
class ModelEndpointArgs:
    """The stable endpoint of a model's deployment: its Service and the traffic split."""

    project: str
    target: KubernetesTarget
    deployment: BuiltDeployment
    servers: list[ModelServer] = field(default_factory=list)


class ModelEndpoint(pulumi.ComponentResource):
    """The stable Service and the HTTPRoute wait for every version's Deployment (pulumi-kubernetes
    waits until a Deployment is available), so no weight moves to pods that are not ready."""

    def __init__(self, name: str, args: ModelEndpointArgs, opts: pulumi.ResourceOptions | None = None) -> None:
        super().__init__("mlops:k8s:ModelEndpoint", name, None, opts)
        deployments: list[pulumi.Resource] = [s.resources["Deployment"] for s in args.servers]
        child = pulumi.ResourceOptions(parent=self, depends_on=deployments)
        self.resources = {
            o["kind"]: create(o, child) for o in model_objects(args.project, args.target, args.deployment)
        }
        self.register_outputs(
            {
                "service": f"{args.deployment.name}.{args.target.namespace_name}.svc",
                "weights": {str(v.number): v.weight for v in args.deployment.versions},
            }
        )
