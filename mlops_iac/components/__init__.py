"""Pulumi ComponentResources for the targets, and the wiring a stack's __main__.py calls.

Components have Pulumi's shape (an Args dataclass, `(name, args, opts)`, a type token,
`parent=self` on every child, `register_outputs` last) and never read files, the
environment or `pulumi.Config`: `deploy` gets everything from the target's plan and the
secret the stack passes in.
"""

from __future__ import annotations

from typing import Any

import pulumi

from ..pinned import built
from ..plan import StackPlan
from ..spec.azure import ContainerAppsTarget, ContainerInstancesTarget
from ..spec.targets import DockerTarget, KubernetesTarget


def deploy(
    plan: StackPlan,
    api_key: pulumi.Input[str] | None = None,
    registry: tuple[pulumi.Input[str], pulumi.Input[str]] | None = None,
) -> dict[str, Any]:
    """Create the components of one target's plan; returns what the stack exports. `registry`:
    the (username, password) Azure pulls images with, from the stack's config."""
    target = plan.target.spec
    if target.kind in ("azure-container-apps", "azure-container-instances"):
        return _azure(plan, api_key, registry)
    if isinstance(target, KubernetesTarget):
        return _kubernetes(plan, target, api_key)
    if isinstance(target, DockerTarget):
        return _docker(plan, target, api_key)
    if target.kind == "azure-iot-edge":
        raise ValueError(
            f"target {plan.target.name} is azure-iot-edge: apply its deployment manifests with "
            "`az iot edge deployment create`, not Pulumi"
        )
    raise ValueError(f"target {plan.target.name} is {target.kind}: it runs with `mlops-iac serve`, not Pulumi")


def _azure(
    plan: StackPlan, api_key: pulumi.Input[str] | None, registry: tuple[pulumi.Input[str], pulumi.Input[str]] | None
) -> dict[str, Any]:
    from .azure import RegistryLogin, deploy_container_apps, deploy_container_instances

    target = plan.target.spec
    login = RegistryLogin(*registry) if registry is not None else None
    if isinstance(target, ContainerAppsTarget):
        return deploy_container_apps(plan, target, api_key, login)
    assert isinstance(target, ContainerInstancesTarget)
    return deploy_container_instances(plan, target, api_key, login)


def _kubernetes(plan: StackPlan, target: KubernetesTarget, api_key: pulumi.Input[str] | None) -> dict[str, Any]:
    import pulumi_kubernetes as k8s

    from .kubernetes import (
        ApiKey,
        ApiKeyArgs,
        ClusterNamespace,
        ClusterNamespaceArgs,
        ModelEndpoint,
        ModelEndpointArgs,
        ModelServer,
        ModelServerArgs,
    )

    provider = k8s.Provider(plan.target.name, context=target.context)
    namespace = ClusterNamespace(
        target.namespace_name, ClusterNamespaceArgs(plan.project, target), pulumi.ResourceOptions(provider=provider)
    )
    # Everything else goes into the namespace, so after it.
    opts = pulumi.ResourceOptions(provider=provider, depends_on=[namespace])
    exported: dict[str, Any] = {}
    for dep in map(built, plan.deployments):  # every version converted and pushed, or an error
        if dep.batch is not None:
            from .batch import BatchJob, BatchJobArgs

            exported[dep.name] = BatchJob(dep.name, BatchJobArgs(plan.project, target, dep), opts).name
            continue
        key_version = None
        if dep.auth == "key":
            if api_key is None:
                raise ValueError(
                    f"deployment {dep.name} has auth: key; set the key with "
                    "`pulumi config set --secret mlops:apiKey <key>`"
                )
            key_version = ApiKey(dep.name, ApiKeyArgs(target, dep, api_key), opts).version
        servers = [
            ModelServer(f"{dep.name}-v{v.number}", ModelServerArgs(plan.project, target, dep, v, key_version), opts)
            for v in dep.versions
        ]
        ModelEndpoint(dep.name, ModelEndpointArgs(plan.project, target, dep, servers), opts)
        exported.update({s.name: v.image for s, v in zip(servers, dep.versions, strict=True)})
    return exported


def _docker(plan: StackPlan, target: DockerTarget, api_key: pulumi.Input[str] | None) -> dict[str, Any]:
    import pulumi_docker as docker

    from ..manifests import network_name
    from .docker import DockerModelServer, DockerModelServerArgs, grpc_host_port, host_port

    ssh = list(target.ssh_opts) if target.host.startswith("ssh://") else None
    provider = docker.Provider(plan.target.name, host=target.host, ssh_opts=ssh)
    opts = pulumi.ResourceOptions(provider=provider)
    exported: dict[str, Any] = {}
    for dep in map(built, plan.deployments):  # every version converted and pushed, or an error
        if dep.batch is not None:  # a one-shot container, no port
            from .docker_batch import DockerBatchJob, DockerBatchJobArgs

            DockerBatchJob(dep.name, DockerBatchJobArgs(dep), opts)
            exported[dep.name] = "one-shot"  # no port: it scores and exits
            continue
        name = network_name(dep)
        network = docker.Network(name, name=name, opts=opts).name if name is not None else None
        for version in dep.versions:  # the shadow versions too: a container each, with no weight
            port, grpc_port = host_port(target, version), grpc_host_port(target, version)
            DockerModelServer(
                f"{dep.name}-v{version.number}",
                DockerModelServerArgs(dep, version, port, api_key, target.platform, grpc_port, network),
                opts,
            )
            exported[f"{dep.name}-v{version.number}"] = port
            if grpc_port is not None:
                exported[f"{dep.name}-v{version.number}-grpc"] = grpc_port
    return exported
