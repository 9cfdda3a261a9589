"""What the Azure services cannot do, as problems of mlops.yaml (see `checks`)."""

from __future__ import annotations

import re
from collections.abc import Iterator
from typing import Any

from ..errors import Problem
from ..loader import Document, PathKey
from ..spec import Deployment
from ..spec.azure import ContainerAppsTarget, ContainerInstancesTarget

APP_NAME = r"[a-z][a-z0-9-]{0,30}[a-z0-9]"  # a Container App's name (and no "--": revisions use it)


def azure_problems(target: Any, doc: Document, here: PathKey, dep: Deployment) -> Iterator[Problem]:
    """What the Azure services cannot do: ACI has no load balancer (a DNS name points at one
    version), Container Apps reserve GPUs only through a GPU workload profile, and none of
    them runs our batch Jobs."""
    kind = getattr(target, "kind", "")
    if not kind.startswith("azure-"):
        return
    if dep.kind == "batch":
        yield doc.problem(
            (*here, "kind"),
            f"a batch deployment on target {dep.target!r} ({kind})",
            "run kind: batch on a kubernetes or docker target",
        )
    if isinstance(target, ContainerInstancesTarget):
        for ref, weight in (dep.traffic or {}).items():
            if weight not in (0, 100):
                yield doc.problem(
                    (*here, "traffic", ref),
                    f"{weight}% on target {dep.target!r}: Container Instances "
                    "have no load balancer, and the front is one DNS name for one version",
                    "expected 100 for the version that serves and 0 for the others (each still "
                    "answers on its own DNS label); split traffic on azure-container-apps",
                )
        if dep.rollout is not None:
            yield doc.problem(
                (*here, "rollout"),
                f"a canary rollout on target {dep.target!r} (Container Instances "
                "cannot send a share of requests to a version)",
                "expected no rollout: switch with traffic 100/0, or use azure-container-apps",
                of_key=True,
            )
    from . import deployment_name  # the package's, which imports this module first

    name = deployment_name(dep)
    if isinstance(target, ContainerAppsTarget) and ("--" in name or not re.fullmatch(APP_NAME, name)):
        yield doc.problem(
            (*here, "name") if dep.name else here,
            f"deployment name {name!r} cannot name a Container App",
            "expected at most 32 lowercase letters, digits and '-', starting with a letter, without "
            "'--' (the default name is <model>-<target>)",
        )
    if isinstance(target, ContainerAppsTarget) and dep.hardware.gpu and target.gpu and target.workload_profile is None:
        yield doc.problem(
            (*here, "hardware", "gpu"),
            f"{dep.hardware.gpu} GPU(s) on Container Apps without a workload profile",
            f"set workloadProfile (a serverless GPU profile of the environment) on targets.{dep.target}",
        )
