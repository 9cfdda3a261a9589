"""What `review` and `render` show of an Azure target: resource names, caveats, every resource."""

from __future__ import annotations

from ..artifacts import canonical_json
from ..contract import UID
from ..manifests import version_name
from ..pinned import BuiltDeployment, PinnedDeployment
from ..resolve import ResolvedDeployment
from ..spec.azure import ContainerAppsTarget, ContainerInstancesTarget, IotEdgeTarget
from .apps import container_app, revision_suffix
from .common import AzureTarget, Object
from .edge import edge_deployment_id, edge_manifest, module_name
from .instances import container_group, dns_record, front_version


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
        return [*out, f"Container Apps set no user or read-only root: the image's USER {UID} applies"]
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
