"""Pulumi ComponentResources for the targets, and the wiring a stack's __main__.py calls.

Components have Pulumi's shape (an Args dataclass, `(name, args, opts)`, a type token,
`parent=self` on every child, `register_outputs` last) and never read files, the
environment or `pulumi.Config`: `deploy` gets everything from the target's plan and the
secret the stack passes in.
"""

from __future__ import annotations

from typing import Any

import pulumi

from ..plan import StackPlan
from ..spec.targets import DockerTarget, KubernetesTarget


def deploy(plan: StackPlan, api_key: pulumi.Input[str] | None = None) -> dict[str, Any]:
    """Create the components of one target's plan; returns what the stack exports."""
    target = plan.target.spec
    if isinstance(target, KubernetesTarget):
        return _kubernetes(plan, target, api_key)
    if isinstance(target, DockerTarget):
        return _docker(plan, target, api_key)
    raise ValueError(f"target {plan.target.name} is {target.kind}: it runs with `mlops-iac serve`, not Pulumi")


def _kubernetes(plan: StackPlan, target: KubernetesTarget, api_key: pulumi.Input[str] | None) -> dict[str, Any]:
    import pulumi_kubernetes as k8s

    from .kubernetes import ModelEndpoint, ModelEndpointArgs, ModelServer, ModelServerArgs

    provider = k8s.Provider(plan.target.name, context=target.context)
    opts = pulumi.ResourceOptions(provider=provider)
    exported: dict[str, Any] = {}
    for dep in plan.deployments:
        if dep.batch is not None:
            from .batch import BatchJob, BatchJobArgs

            exported[dep.name] = BatchJob(dep.name, BatchJobArgs(plan.project, target, dep), opts).name
            continue
        ModelEndpoint(dep.name, ModelEndpointArgs(plan.project, target, dep, api_key), opts)
        for version in dep.versions:
            server = ModelServer(f"{dep.name}-v{version.number}",
                                 ModelServerArgs(plan.project, target, dep, version), opts)
            exported[server.name] = version.image
    return exported


def _docker(plan: StackPlan, target: DockerTarget, api_key: pulumi.Input[str] | None) -> dict[str, Any]:
    import pulumi_docker as docker

    from .docker import DockerModelServer, DockerModelServerArgs

    provider = docker.Provider(plan.target.name, host=target.host)
    opts = pulumi.ResourceOptions(provider=provider)
    exported: dict[str, Any] = {}
    port = target.port
    for dep in plan.deployments:
        if dep.batch is not None:  # a one-shot container, no port
            from .docker_batch import DockerBatchJob, DockerBatchJobArgs

            DockerBatchJob(dep.name, DockerBatchJobArgs(dep), opts)
            exported[dep.name] = "one-shot"  # no port: it scores and exits
            continue
        for version in dep.versions:
            DockerModelServer(f"{dep.name}-v{version.number}",
                              DockerModelServerArgs(dep, version, port, api_key), opts)
            exported[f"{dep.name}-v{version.number}"] = port  # versions side by side, one port each
            port += 1
    return exported
