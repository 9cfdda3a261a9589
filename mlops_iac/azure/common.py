"""Shared by the Azure resources: the server settings as one line, the registry login, limits."""

from __future__ import annotations

import json
from typing import Any, TypeVar

from ..manifests import server_settings
from ..pinned import BuiltVersion, PinnedDeployment
from ..resolve import ResolvedVersion
from ..spec.azure import ContainerAppsTarget, ContainerInstancesTarget, IotEdgeTarget

Object = dict[str, Any]
READY, LIVE = "/v2/health/ready", "/v2/health/live"
# Container Apps (consumption): 0.25 to 4 cores in steps of 0.25, memory 2 GiB per core.
ACA_CPU_STEP, ACA_MAX_CPU, ACA_GIB_PER_CPU = 0.25, 4.0, 2.0
# Container Instances (Linux, standard): up to 4 cores and 16 GB per container group.
ACI_MAX_CPU, ACI_MAX_MEMORY_GB = 4.0, 16.0
EDGE_AGENT, EDGE_HUB = "mcr.microsoft.com/azureiotedge-agent:1.5", "mcr.microsoft.com/azureiotedge-hub:1.5"
CREATE_OPTIONS_CHUNK, CREATE_OPTIONS_FIELDS = 512, 8  # the edge agent joins createOptions, 01 .. 07
V = TypeVar("V", bound=ResolvedVersion)
AzureTarget = ContainerAppsTarget | ContainerInstancesTarget | IotEdgeTarget


def registry_server(image: str) -> str:
    """`ghcr.io/acme/models/iris@sha256:...` -> `ghcr.io`: where the login applies."""
    return image.split("/", 1)[0]


def settings_json(dep: PinnedDeployment, version: BuiltVersion) -> str:
    """The server's settings as one compact line: an environment variable's value."""
    assert version.onnx_digest is not None
    return json.dumps(
        server_settings(dep, version, version.onnx_digest).model_dump(mode="json"),
        sort_keys=True,
        separators=(",", ":"),
    )
