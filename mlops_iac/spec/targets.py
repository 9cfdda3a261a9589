"""`targets{}`: where deployments run, keyed by name, with `kind` choosing the shape."""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import Field

from .azure import ContainerAppsTarget, ContainerInstancesTarget, IotEdgeTarget
from .types import Name, SpecModel

Platform = Literal["linux/amd64", "linux/arm64"]
DOCKER_HOST = r"^(ssh://[^\s/]+|unix:///\S+|tcp://[^\s/]+(:[0-9]+)?|npipe:////\S+)$"


class LocalTarget(SpecModel):
    kind: Literal["local"]
    host: str = "127.0.0.1"
    port: int = Field(8080, ge=1, le=65535)


class DockerTarget(SpecModel):
    kind: Literal["docker"]
    host: str = Field(
        "unix:///var/run/docker.sock",
        pattern=DOCKER_HOST,
        description="DOCKER_HOST: ssh://user@edge-01, unix:///..., tcp://host:2376",
    )
    port: int = Field(8080, ge=1, le=65535, description="Host port of version 1; version N listens on port + N - 1.")
    grpc_port: int | None = Field(
        None,
        ge=1,
        le=65535,
        description=(
            "Host port of version 1's v2 gRPC listener; version N listens on grpcPort + N - 1. "
            "Unset: gRPC is served inside the container but not published on the host."
        ),
    )
    ssh_opts: tuple[str, ...] = Field(
        ("-o", "BatchMode=yes", "-o", "ConnectTimeout=30", "-o", "ServerAliveInterval=15"),
        description="Options for ssh when host is ssh://; default: never prompt, fail fast on a dead link.",
    )
    platform: Platform = "linux/amd64"
    gpu: bool = Field(False, description="The host has the NVIDIA container runtime.")


class Gateway(SpecModel):
    name: Name
    namespace: Name | None = None


class Namespace(SpecModel):
    name: Name
    create: bool = Field(True, description="false: it exists already; the stack neither creates nor labels it.")


class PrometheusOperator(SpecModel):
    enabled: bool = Field(False, description="The cluster has prometheus-operator's CRDs (ServiceMonitor, ...).")
    labels: dict[str, str] = Field(
        default_factory=dict, description="Labels its Prometheus selects on, e.g. {release: kube-prometheus-stack}."
    )


class ClusterMonitoring(SpecModel):
    namespace: Name = Field("monitoring", description="Where Prometheus runs: only it may reach the metrics port.")
    prometheus_operator: PrometheusOperator = PrometheusOperator()


class KubernetesTarget(SpecModel):
    kind: Literal["kubernetes"]
    context: str | None = Field(None, description="kubeconfig context; default: the current one.")
    namespace: Name | Namespace = Field(
        "default",
        description="A name (created and labelled for Pod Security `restricted`, except `default`), "
        "or {name, create: false} for one that exists.",
    )
    gateway: Gateway | None = Field(None, description="Gateway API gateway: an HTTPRoute splits traffic by weight.")
    hostname: str | None = Field(None, pattern=r"^(\*\.)?[a-z0-9]([-a-z0-9.]*[a-z0-9])?$")
    platform: Platform = "linux/amd64"
    gpu: bool = Field(False, description="The cluster schedules nvidia.com/gpu.")
    image_pull_secrets: tuple[Name, ...] = Field((), description="Secrets (in the namespace) to pull images with.")
    monitoring: ClusterMonitoring = ClusterMonitoring()

    @property
    def namespace_name(self) -> str:
        return self.namespace if isinstance(self.namespace, str) else self.namespace.name

    @property
    def creates_namespace(self) -> bool:
        """`default` always exists: creating it would fail, and relabelling it is not ours to do."""
        if isinstance(self.namespace, str):
            return self.namespace != "default"
        return self.namespace.create


AzureTarget = ContainerAppsTarget | ContainerInstancesTarget | IotEdgeTarget
Target = Annotated[LocalTarget | DockerTarget | KubernetesTarget | AzureTarget, Field(discriminator="kind")]
TargetName = Name
