"""Azure IoT Edge: a deployment manifest per device group; each version a module on its own host port.

What must not be committed (the API key, the registry login) is a `${NAME}` placeholder in the
manifest; the workflow fills them in (`envsubst`) right before `az iot edge deployment create`.
"""

from __future__ import annotations

import hashlib
import json

from ..artifacts import FileArtifact, canonical_json
from ..contract import (
    API_KEY_ENV,
    GRPC_PORT,
    PORT,
    REGISTRY_PASSWORD_ENV,
    REGISTRY_USERNAME_ENV,
    SETTINGS_ENV,
    UID,
    version_host_port,
)
from ..errors import PlanError
from ..manifests import GRACE_SECONDS, version_name
from ..pinned import BuiltDeployment, BuiltVersion, PinnedDeployment, PinnedVersion, built
from ..plan import Plan, check_host_ports
from ..spec.azure import IotEdgeTarget
from .common import (
    CREATE_OPTIONS_CHUNK,
    CREATE_OPTIONS_FIELDS,
    EDGE_AGENT,
    EDGE_HUB,
    Object,
    registry_server,
    settings_json,
)


def edge_port(target: IotEdgeTarget, version: PinnedVersion) -> int:
    return version_host_port(target.port, version.number)


def edge_grpc_port(target: IotEdgeTarget, version: PinnedVersion) -> int | None:
    """The version's gRPC port on the device; None where the target publishes no gRPC."""
    return None if target.grpc_port is None else version_host_port(target.grpc_port, version.number)


def module_name(dep: PinnedDeployment, version: PinnedVersion) -> str:
    """A module name (letters, digits, '-' and '_'), the same as the version's container elsewhere."""
    return version_name(dep.model, version)


def create_options(dep: PinnedDeployment, version: BuiltVersion, target: IotEdgeTarget) -> Object:
    """The Docker Engine API's container create body the edge agent uses for the module: the
    limits and restrictions of every other target (read-only root, user 10001, no capabilities,
    no privilege escalation, /tmp in memory), the health check, and the host port."""
    hw, nanos = version.hardware, 10**9
    ports = {PORT: edge_port(target, version)}
    grpc = edge_grpc_port(target, version)
    if grpc is not None:
        ports[GRPC_PORT] = grpc
    host: Object = {
        "ReadonlyRootfs": True,
        "CapDrop": ["ALL"],
        "SecurityOpt": ["no-new-privileges:true"],
        "Memory": hw.memory_limit_bytes,
        "MemorySwap": hw.memory_limit_bytes,
        "NanoCpus": hw.cpu_limit_millis * 10**6,
        "Tmpfs": {"/tmp": "rw,size=64m"},  # noqa: S108 - the container's own /tmp, in memory
        # Kept when the module goes: the collected requests are the drift check's input.
        "Binds": [f"{module_name(dep, version)}-data:/data"],
        "PortBindings": {f"{port}/tcp": [{"HostPort": str(host_port)}] for port, host_port in ports.items()},
        "LogConfig": {"Type": "json-file", "Config": {"max-size": "10m", "max-file": "3"}},
    }
    if hw.gpu:
        host["DeviceRequests"] = [{"Driver": "nvidia", "Count": hw.gpu, "Capabilities": [["gpu"]]}]
    return {
        "User": f"{UID}:{UID}",
        "Cmd": ["--port", str(PORT)],
        "ExposedPorts": {f"{p}/tcp": {} for p in ports},
        "StopTimeout": GRACE_SECONDS - 10,
        "Healthcheck": {
            "Test": ["CMD", "/opt/venv/bin/python", "-m", "mlops_iac.serving.health"],
            "Interval": 10 * nanos,
            "Timeout": 3 * nanos,
            "StartPeriod": 30 * nanos,
            "Retries": 3,
        },
        "HostConfig": host,
    }


def split_create_options(options: Object) -> Object:
    """`createOptions` as the edge agent reads it: a JSON string, in fields of at most 512
    characters (`createOptions`, `createOptions01`, ...), which it joins again."""
    text = json.dumps(options, sort_keys=True, separators=(",", ":"))
    chunks = [text[i : i + CREATE_OPTIONS_CHUNK] for i in range(0, len(text), CREATE_OPTIONS_CHUNK)]
    if len(chunks) > CREATE_OPTIONS_FIELDS:
        raise PlanError(
            f"createOptions of {len(text)} characters: the edge agent takes at most "
            f"{CREATE_OPTIONS_CHUNK * CREATE_OPTIONS_FIELDS}"
        )
    return {("createOptions" if i == 0 else f"createOptions{i:02d}"): c for i, c in enumerate(chunks)}


def _module(dep: PinnedDeployment, version: BuiltVersion, target: IotEdgeTarget) -> Object:
    assert version.image is not None
    env: Object = {SETTINGS_ENV: {"value": settings_json(dep, version)}}
    if dep.auth == "key":
        env[API_KEY_ENV] = {"value": f"${{{API_KEY_ENV}}}"}
    return {
        "version": str(version.number),
        "type": "docker",
        "status": "running",
        "restartPolicy": "always",
        "settings": {"image": version.image, **split_create_options(create_options(dep, version, target))},
        "env": env,
    }


def edge_manifest(target: IotEdgeTarget, deployments: tuple[BuiltDeployment, ...]) -> Object:
    """The deployment manifest (one per device group: the same modules, another device query)."""
    modules = {module_name(d, v): _module(d, v, target) for d in deployments for v in d.versions}
    servers = sorted({registry_server(v.image) for d in deployments for v in d.versions if v.image})
    runtime: Object = {"minDockerVersion": "v1.25"}
    if servers:
        runtime["registryCredentials"] = {
            f"registry{i}": {
                "address": s,
                "username": f"${{{REGISTRY_USERNAME_ENV}}}",
                "password": f"${{{REGISTRY_PASSWORD_ENV}}}",
            }
            for i, s in enumerate(servers)
        }
    agent = {
        "schemaVersion": "1.1",
        "runtime": {"type": "docker", "settings": runtime},
        "systemModules": {
            "edgeAgent": {"type": "docker", "settings": {"image": EDGE_AGENT, "createOptions": "{}"}},
            "edgeHub": {
                "type": "docker",
                "status": "running",
                "restartPolicy": "always",
                "settings": {
                    "image": EDGE_HUB,
                    "createOptions": json.dumps(
                        {
                            "HostConfig": {
                                "PortBindings": {
                                    p: [{"HostPort": p.split("/")[0]}] for p in ("443/tcp", "5671/tcp", "8883/tcp")
                                }
                            }
                        },
                        sort_keys=True,
                        separators=(",", ":"),
                    ),
                },
            },
        },
        "modules": modules,
    }
    # Our server sends nothing through the hub; should a handler emit messages, they go upstream.
    routes = {
        f"{name.replace('-', '_')}ToUpstream": f"FROM /messages/modules/{name}/outputs/* INTO $upstream"
        for name in modules
    }
    hub = {"schemaVersion": "1.2", "routes": routes, "storeAndForwardConfiguration": {"timeToLiveSecs": 7200}}
    return {"modulesContent": {"$edgeAgent": {"properties.desired": agent}, "$edgeHub": {"properties.desired": hub}}}


def edge_files(plan: Plan) -> tuple[FileArtifact, ...]:
    """`<target>/<group>.deployment.json` for every device group of every IoT Edge target, and
    `<target>/<group>.condition` with its device query, as `az iot edge deployment create` takes them."""
    files = []
    for stack in plan.stacks:
        target = stack.target.spec
        if not isinstance(target, IotEdgeTarget):
            continue
        check_host_ports(stack, target.port, target.grpc_port)  # modules share the device's ports
        manifest = canonical_json(edge_manifest(target, tuple(map(built, stack.deployments))))
        for group, condition in sorted(target.device_groups.items()):
            files.append(FileArtifact(path=f"{stack.target.name}/{group}.deployment.json", content=manifest))
            files.append(FileArtifact(path=f"{stack.target.name}/{group}.condition", content=condition + "\n"))
    return tuple(files)


def edge_deployment_id(project: str, target_name: str, group: str, manifest: str) -> str:
    """IoT Hub deployments are immutable: the id carries the manifest's digest, so a change is a
    new deployment (with the same priority) that replaces the old one on the matching devices."""
    return f"{project}-{target_name}-{group}-{hashlib.sha256(manifest.encode()).hexdigest()[:8]}"[:128]
