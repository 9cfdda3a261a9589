"""`targets{}`: where deployments run, keyed by name, with `kind` choosing the shape."""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import Field

from .types import Name, SpecModel

Platform = Literal["linux/amd64", "linux/arm64"]
DOCKER_HOST = r"^(ssh://[^\s/]+|unix:///\S+|tcp://[^\s/]+(:[0-9]+)?|npipe:////\S+)$"


class LocalTarget(SpecModel):
    kind: Literal["local"]
    host: str = "127.0.0.1"
    port: int = Field(8080, ge=1, le=65535)


class DockerTarget(SpecModel):
    kind: Literal["docker"]
    host: str = Field("unix:///var/run/docker.sock", pattern=DOCKER_HOST,
                      description="DOCKER_HOST: ssh://user@edge-01, unix:///..., tcp://host:2376")
    port: int = Field(8080, ge=1, le=65535)
    platform: Platform = "linux/amd64"
    gpu: bool = Field(False, description="The host has the NVIDIA container runtime.")


class Gateway(SpecModel):
    name: Name
    namespace: Name | None = None


class KubernetesTarget(SpecModel):
    kind: Literal["kubernetes"]
    context: str | None = Field(None, description="kubeconfig context; default: the current one.")
    namespace: Name = "default"
    gateway: Gateway | None = Field(None, description="Gateway API gateway for traffic splitting.")
    hostname: str | None = Field(None, pattern=r"^(\*\.)?[a-z0-9]([-a-z0-9.]*[a-z0-9])?$")
    platform: Platform = "linux/amd64"
    gpu: bool = Field(False, description="The cluster schedules nvidia.com/gpu.")


Target = Annotated[LocalTarget | DockerTarget | KubernetesTarget, Field(discriminator="kind")]
TargetName = Name
