"""The Azure targets of `targets{}`: Container Apps, Container Instances and IoT Edge devices.

Credentials are never written here: the registry login the images are pulled with is the
stack's Pulumi config (`mlops:registryUsername`, `mlops:registryPassword` as a secret).
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from .types import Name, SpecModel

# Azure's own rules for the names these fields take. A resource group has 1 to 90 characters:
# the length is its own constraint, as `{0,89}` of a Unicode class cost the regex engine 6 to 13 ms
# to compile, once per validator that holds it (eight at import, on every command).
RESOURCE_GROUP = r"^[-\w._()]*[-\w_()]$"
RESOURCE_GROUP_LENGTH = 90
LOCATION = r"^[a-z][a-z0-9]{1,39}$"
ENVIRONMENT_ID = (
    r"^/subscriptions/[^/\s]+/resourceGroups/[^/\s]+/providers/Microsoft\.App/"
    r"managedEnvironments/[^/\s]+$"
)
DNS_ZONE = r"^([a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?\.)+[a-z]{2,63}$"
IOT_HUB = r"^[A-Za-z0-9]([-A-Za-z0-9]{1,48}[A-Za-z0-9])$"


class ContainerAppsTarget(SpecModel):
    kind: Literal["azure-container-apps"]
    resource_group: str = Field(
        pattern=RESOURCE_GROUP,
        max_length=RESOURCE_GROUP_LENGTH,
        description="The resource group of the Container Apps.",
    )
    location: str = Field(pattern=LOCATION, description="Azure region, e.g. westeurope.")
    environment: str = Field(
        pattern=ENVIRONMENT_ID,
        description=("Resource ID of the Container Apps environment (/subscriptions/.../managedEnvironments/NAME)."),
    )
    external: bool = Field(True, description="Ingress from the internet (false: only inside the environment).")
    concurrency: int = Field(
        50, ge=1, le=10_000, description="Requests in flight per replica before the HTTP scale rule adds one."
    )
    workload_profile: str | None = Field(
        None,
        pattern=r"^[A-Za-z0-9][-A-Za-z0-9]{0,63}$",
        description=(
            "A workload profile of the environment (needed for GPUs: a serverless GPU profile); default: Consumption."
        ),
    )
    gpu: bool = Field(False, description="The workload profile has GPUs (with workloadProfile).")


class DnsFront(SpecModel):
    """A stable name in an Azure DNS zone: a CNAME to the container group of the version with
    all the traffic. DNS cannot split requests, so ACI takes no weights between 1 and 99."""

    zone: str = Field(pattern=DNS_ZONE, description="An Azure DNS zone in the target's resource group.")
    name: Name = Field(description="The record: NAME.ZONE points at the serving version.")
    ttl: int = Field(60, ge=1, le=86_400, description="Seconds resolvers may keep the answer.")


class ContainerInstancesTarget(SpecModel):
    kind: Literal["azure-container-instances"]
    resource_group: str = Field(
        pattern=RESOURCE_GROUP,
        max_length=RESOURCE_GROUP_LENGTH,
        description="The resource group of the container groups.",
    )
    location: str = Field(pattern=LOCATION, description="Azure region, e.g. westeurope.")
    front: DnsFront | None = Field(
        None,
        description=(
            "A stable name for the deployment (a CNAME); without it each version answers on its own DNS label."
        ),
    )
    gpu: bool = Field(False, description="Request GPUs of `gpuSku` (only in regions that offer them).")
    gpu_sku: Literal["K80", "P100", "V100"] = "V100"


class IotEdgeTarget(SpecModel):
    kind: Literal["azure-iot-edge"]
    hub: str = Field(pattern=IOT_HUB, description="The IoT Hub that deploys to the devices.")
    device_groups: dict[Name, str] = Field(
        min_length=1,
        description=(
            "A deployment manifest per group: its name and the device query (target condition) it "
            "applies to, e.g. {plant-1: \"tags.site='plant-1'\"}."
        ),
    )
    priority: int = Field(10, ge=0, le=2_147_483_647, description="Higher wins where deployments overlap.")
    port: int = Field(8080, ge=1, le=65535, description="Host port of version 1; version N listens on port + N - 1.")
    grpc_port: int | None = Field(
        None,
        ge=1,
        le=65535,
        description=(
            "Host port of version 1's v2 gRPC listener; version N listens on grpcPort + N - 1. "
            "Unset: gRPC is served inside the module but not published on the device."
        ),
    )
    platform: Literal["linux/amd64", "linux/arm64"] = "linux/amd64"
    gpu: bool = Field(False, description="The devices have the NVIDIA container runtime.")


AZURE_KINDS = ("azure-container-apps", "azure-container-instances", "azure-iot-edge")
