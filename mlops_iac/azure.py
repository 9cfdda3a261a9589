"""The Azure resources of a deployment, as plain data. Pure.

One source of truth, as `manifests.py` is for Kubernetes: the Pulumi components build typed
pulumi-azure-native resources from these properties (`components/azure.py`, which checks every
name against the provider's input types), `mlops-iac render` prints them, and `synth` writes
the IoT Edge deployment manifests.

- Container Apps: one Container App per deployment in multiple-revision mode; each version is
  a revision named `<app>--v<N>-<digest>`; the ingress splits traffic by revision weight. The
  app's template is the newest version (the last listed, the canary), so an older version's
  revision is the one an earlier `up` made: deploy the stable version before its canary.
- Container Instances: one container group per version with its own DNS label; no load
  balancer, so the optional front is a CNAME to the version with all the traffic.
- IoT Edge: a deployment manifest per device group, the module's `createOptions` carrying the
  limits and restrictions our other targets run with.
"""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Iterable
from typing import Any, TypeVar

from .artifacts import FileArtifact, canonical_json
from .errors import PlanError
from .manifests import GRACE_SECONDS, GRPC_PORT, METRICS_PORT, PORT, UID, server_settings, version_name
from .pinned import BuiltDeployment, BuiltVersion, PinnedDeployment, PinnedVersion, built
from .plan import Plan, check_host_ports
from .resolve import ResolvedDeployment, ResolvedVersion
from .spec.azure import ContainerAppsTarget, ContainerInstancesTarget, IotEdgeTarget

Object = dict[str, Any]
READY, LIVE = "/v2/health/ready", "/v2/health/live"
# Placeholders a manifest carries for what must not be committed; the workflow fills them in
# (`envsubst`) right before `az iot edge deployment create`.
EDGE_SECRETS = ("MLOPS_IAC_API_KEY", "MLOPS_IAC_REGISTRY_USERNAME", "MLOPS_IAC_REGISTRY_PASSWORD")
# Container Apps (consumption): 0.25 to 4 cores in steps of 0.25, memory 2 GiB per core.
ACA_CPU_STEP, ACA_MAX_CPU, ACA_GIB_PER_CPU = 0.25, 4.0, 2.0
# Container Instances (Linux, standard): up to 4 cores and 16 GB per container group.
ACI_MAX_CPU, ACI_MAX_MEMORY_GB = 4.0, 16.0
EDGE_AGENT, EDGE_HUB = "mcr.microsoft.com/azureiotedge-agent:1.5", "mcr.microsoft.com/azureiotedge-hub:1.5"
CREATE_OPTIONS_CHUNK, CREATE_OPTIONS_FIELDS = 512, 8  # the edge agent joins createOptions, 01 .. 07


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


# --- Container Apps ----------------------------------------------------------------------------


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
    env: list[Object] = [{"name": "MLOPS_IAC_SERVER_SETTINGS", "value": settings_json(dep, newest)}]
    if dep.auth == "key":
        secrets.append({"name": "api-key", "value": api_key})
        env.append({"name": "MLOPS_IAC_API_KEY", "secretRef": "api-key"})
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


# --- Container Instances -----------------------------------------------------------------------


def group_resources(dep: PinnedDeployment, version: PinnedVersion) -> tuple[float, float]:
    """Cores and GB of a container group: the limits, rounded up to tenths, within ACI's."""
    hw = version.hardware
    cores = math.ceil(hw.cpu_limit_millis / 100 - 1e-9) / 10
    memory = math.ceil(hw.memory_limit_bytes / 10**8 - 1e-9) / 10
    if cores > ACI_MAX_CPU or memory > ACI_MAX_MEMORY_GB:
        raise PlanError(
            f"{dep.name} v{version.number}: {cores:g} cores and {memory:g} GB exceed a Container "
            f"Instances group ({ACI_MAX_CPU:g} cores, {ACI_MAX_MEMORY_GB:g} GB); lower hardware.cpu/memory"
        )
    return cores, memory


def container_group(
    project: str,
    target: ContainerInstancesTarget,
    dep: BuiltDeployment,
    version: BuiltVersion,
    *,
    api_key: Any = None,
    registry: tuple[Any, Any] | None = None,
) -> Object:
    """One version's ContainerGroup arguments; its DNS label is the version's name."""
    assert version.image is not None
    name = version_name(dep.model, version)
    cores, memory = group_resources(dep, version)
    requests: Object = {"cpu": cores, "memoryInGB": memory}
    if version.hardware.gpu:
        requests["gpu"] = {"count": version.hardware.gpu, "sku": target.gpu_sku}
    env: list[Object] = [{"name": "MLOPS_IAC_SERVER_SETTINGS", "value": settings_json(dep, version)}]
    if dep.auth == "key":
        env.append({"name": "MLOPS_IAC_API_KEY", "secureValue": api_key})
    http = {"path": READY, "port": PORT, "scheme": "http"}
    args: Object = {
        "containerGroupName": name,
        "resourceGroupName": target.resource_group,
        "location": target.location,
        "osType": "Linux",
        "restartPolicy": "Always",
        "sku": "Standard",
        "tags": {
            "mlops-iac-project": project,
            "mlops-iac-deployment": dep.name,
            "mlops-iac-version": str(version.number),
        },
        "containers": [
            {
                # No command: the image's entrypoint and its default arguments (--port 8080).
                "name": "server",
                "image": version.image,
                "ports": [{"port": PORT, "protocol": "TCP"}],
                "environmentVariables": env,
                "resources": {"requests": requests},
                # No startup probe on ACI: liveness starts late enough for the model to load.
                "readinessProbe": {"httpGet": http, "periodSeconds": 5, "failureThreshold": 3, "timeoutSeconds": 3},
                "livenessProbe": {
                    "httpGet": {**http, "path": LIVE},
                    "initialDelaySeconds": 30,
                    "periodSeconds": 10,
                    "failureThreshold": 3,
                    "timeoutSeconds": 3,
                },
                "volumeMounts": [{"name": "data", "mountPath": "/data"}],
            }
        ],
        "volumes": [{"name": "data", "emptyDir": {}}],
        "ipAddress": {
            "type": "Public",
            "ports": [{"port": PORT, "protocol": "TCP"}],
            "dnsNameLabel": name,
            # the label is reusable only by this tenant: no one else can take over the name
            "autoGeneratedDomainNameLabelScope": "TenantReuse",
        },
    }
    if registry is not None:
        args["imageRegistryCredentials"] = [
            {"server": registry_server(version.image), "username": registry[0], "password": registry[1]}
        ]
    return args


def front_version(versions: Iterable[V]) -> V:
    """The version the stable name points at: the one with all the traffic (checks allow 100/0 only)."""
    return next(v for v in versions if v.weight == 100)


def dns_record(target: ContainerInstancesTarget, dep: PinnedDeployment, fqdn: Any) -> Object:
    assert target.front is not None
    return {
        "resourceGroupName": target.resource_group,
        "zoneName": target.front.zone,
        "relativeRecordSetName": target.front.name,
        "recordType": "CNAME",
        "ttl": target.front.ttl,
        "cnameRecord": {"cname": fqdn},
        "metadata": {"mlops-iac-deployment": dep.name},
    }


# --- IoT Edge ----------------------------------------------------------------------------------


def edge_port(target: IotEdgeTarget, version: PinnedVersion) -> int:
    return target.port + version.number - 1


def module_name(dep: PinnedDeployment, version: PinnedVersion) -> str:
    """A module name (letters, digits, '-' and '_'), the same as the version's container elsewhere."""
    return version_name(dep.model, version)


def create_options(dep: PinnedDeployment, version: BuiltVersion, target: IotEdgeTarget) -> Object:
    """The Docker Engine API's container create body the edge agent uses for the module: the
    limits and restrictions of every other target (read-only root, user 10001, no capabilities,
    no privilege escalation, /tmp in memory), the health check, and the host port."""
    hw, nanos = version.hardware, 10**9
    ports = {PORT: edge_port(target, version)}
    if target.grpc_port is not None:
        ports[GRPC_PORT] = target.grpc_port + version.number - 1
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
    env: Object = {"MLOPS_IAC_SERVER_SETTINGS": {"value": settings_json(dep, version)}}
    if dep.auth == "key":
        env["MLOPS_IAC_API_KEY"] = {"value": "${MLOPS_IAC_API_KEY}"}
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
                "username": "${MLOPS_IAC_REGISTRY_USERNAME}",
                "password": "${MLOPS_IAC_REGISTRY_PASSWORD}",
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


# --- what the review says ----------------------------------------------------------------------

V = TypeVar("V", bound=ResolvedVersion)
AzureTarget = ContainerAppsTarget | ContainerInstancesTarget | IotEdgeTarget


def resource_names(target: AzureTarget, dep: ResolvedDeployment, pinned: PinnedDeployment) -> set[str]:
    """What a deployment runs as on an Azure target, by kind and name (for the review)."""
    if isinstance(target, ContainerAppsTarget):
        revisions = (f"Revision/{dep.name}--{revision_suffix(pinned, v)}" for v in pinned.versions)
        return {f"ContainerApp/{dep.name}", *revisions}
    if isinstance(target, ContainerInstancesTarget):
        names = {f"ContainerGroup/{version_name(dep.model, v)}" for v in pinned.versions}
        return names | ({f"RecordSet/{target.front.name}.{target.front.zone}"} if target.front else set())
    return {f"Module/{module_name(pinned, v)}@{group}" for v in pinned.versions for group in target.device_groups}


def caveats(target: AzureTarget, dep: ResolvedDeployment) -> list[str]:
    """What the Azure service does with `traffic`, and what it does not do."""
    several = len(dep.served) > 1
    if isinstance(target, ContainerAppsTarget):
        out = ["weights are the Container App's ingress weights per revision"] if several else []
        if several:
            out.append(
                "a version's revision is made when it is the app's template (the newest version): "
                "deploy the stable version alone first, then add its canary"
            )
        return [*out, "Container Apps set no user or read-only root: the image's USER 10001 applies"]
    if isinstance(target, ContainerInstancesTarget):
        front = f"`{target.front.name}.{target.front.zone}`" if target.front else ""
        out = [
            f"{front} points at v{front_version(dep.versions).number}; every version also answers on its own DNS label"
            if target.front
            else "no front: each version answers on its own DNS label (<version>.<hash>.<region>.azurecontainer.io)"
        ]
        return [*out, "container groups serve plain HTTP on a public IP: put TLS in front of them for `auth: key`"]
    out = [
        f"applied per device group with `az iot edge deployment create` (priority {target.priority}): "
        + ", ".join(sorted(target.device_groups))
    ]
    if several:
        out.append(
            "weights are not honoured on a device: each version answers on its own host port "
            "(the target's port + version - 1); clients choose"
        )
    if target.grpc_port is None:
        out.append("gRPC is served inside the module but not published on the device (set the target's `grpcPort`)")
    return out


# --- what `render` prints ----------------------------------------------------------------------

SECRET = "(secret: pulumi config mlops:{})"  # noqa: S105 - what render shows in place of a secret


def target_resources(
    project: str, target_name: str, target: AzureTarget, deployments: tuple[BuiltDeployment, ...]
) -> list[Object]:
    """Every resource of an Azure target as `{type, name, properties}`, with the stack's secrets
    shown as what sets them; for IoT Edge, the deployment per device group."""
    key, login = SECRET.format("apiKey"), (SECRET.format("registryUsername"), SECRET.format("registryPassword"))
    out: list[Object] = []
    for dep in deployments:
        if isinstance(target, ContainerAppsTarget):
            out.append(
                {
                    "type": "azure-native:app:ContainerApp",
                    "name": dep.name,
                    "properties": container_app(project, target, dep, api_key=key, registry=login),
                }
            )
        elif isinstance(target, ContainerInstancesTarget):
            out += [
                {
                    "type": "azure-native:containerinstance:ContainerGroup",
                    "name": version_name(dep.model, v),
                    "properties": container_group(project, target, dep, v, api_key=key, registry=login),
                }
                for v in dep.versions
            ]
            if target.front is not None:
                fqdn = f"(the FQDN of {version_name(dep.model, front_version(dep.versions))})"
                out.append(
                    {
                        "type": "azure-native:dns:RecordSet",
                        "name": f"{dep.name}-front",
                        "properties": dns_record(target, dep, fqdn),
                    }
                )
    if isinstance(target, IotEdgeTarget):
        manifest = edge_manifest(target, deployments)
        text = canonical_json(manifest)
        out += [
            {
                "type": "iothub:edge-deployment",
                "name": edge_deployment_id(project, target_name, group, text),
                "properties": {
                    "hub": target.hub,
                    "targetCondition": condition,
                    "priority": target.priority,
                    "content": manifest,
                },
            }
            for group, condition in sorted(target.device_groups.items())
        ]
    return out
