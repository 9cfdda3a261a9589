"""Which versions a deployment serves, and how: the selection (version, alias or versions),
the traffic weights, the rollout's two versions and the shadow versions (see `checks`)."""

from __future__ import annotations

from collections.abc import Iterator

from ..errors import Problem
from ..loader import Document, PathKey
from ..lock import Lock
from ..spec import Deployment
from ..spec.targets import DockerTarget, KubernetesTarget, LocalTarget, Target

# The Gateway API's HTTPRoute takes at most 16 rules (spec.rules, maxItems in its CRD): the API
# server refuses a longer one at `pulumi up`, long after the plan.
HTTPROUTE_MAX_RULES = 16


def deployed_refs(dep: Deployment) -> tuple[int | str, ...]:
    """The versions a deployment runs, as written (numbers, aliases or digests)."""
    if dep.versions is not None:
        return dep.versions
    if dep.version is not None:
        return (dep.version,)
    if dep.alias is not None:
        return (dep.alias,)
    return ()


def selection_problems(
    doc: Document, here: PathKey, dep: Deployment, *, written: frozenset[str] = frozenset()
) -> Iterator[Problem]:
    """`written`: keys the file has but that failed validation (reported apart): still given."""
    pairs = (("version", dep.version), ("alias", dep.alias), ("versions", dep.versions))
    given = [k for k, v in pairs if v is not None or k in written]
    if len(given) != 1:
        found = "none of them" if not given else " and ".join(given)
        yield doc.problem(
            here if not given else (*here, given[1]),
            f"a deployment names its versions once; found {found}",
            "expected exactly one of: version, alias, versions",
            of_key=True,
        )
    if dep.versions is not None and len(set(dep.versions)) != len(dep.versions):
        yield doc.problem((*here, "versions"), "a version is listed twice", "list each version once")


def traffic_problems(doc: Document, here: PathKey, dep: Deployment, *, rollout: bool) -> Iterator[Problem]:
    refs = deployed_refs(dep)
    if dep.traffic is None:
        if len(refs) > 1 and not rollout:  # a rollout sets the weights itself
            yield doc.problem(
                (*here, "versions"),
                f"{len(refs)} versions and no traffic",
                "add traffic: a percent per version, summing to 100",
                of_key=True,
            )
        return
    for ref, weight in dep.traffic.items():
        if ref not in refs:
            yield doc.problem(
                (*here, "traffic", ref),
                f"traffic names version {ref!r}, which this deployment does not deploy",
                "expected one of: " + ", ".join(str(r) for r in refs),
                of_key=True,
            )
        if not 0 <= weight <= 100:
            yield doc.problem((*here, "traffic", ref), f"got {weight}", "expected a percent from 0 to 100")
    total = sum(dep.traffic.values())
    if total != 100:
        yield doc.problem(
            (*here, "traffic"), f"the weights sum to {total}", "expected weights that sum to 100", of_key=True
        )


def rollout_problems(doc: Document, here: PathKey, dep: Deployment) -> Iterator[Problem]:
    if dep.rollout is not None and (dep.versions is None or len(dep.versions) != 2):
        yield doc.problem(
            (*here, "rollout"),
            "a rollout needs two versions: the stable one and the canary",
            "expected versions: [STABLE, CANARY] (the canary last) beside rollout",
            of_key=True,
        )


def shadow_problems(
    doc: Document, here: PathKey, dep: Deployment, target: Target | None, lock: Lock | None
) -> Iterator[Problem]:
    assert dep.shadow is not None
    refs = deployed_refs(dep)
    # Our servers mirror on local and Docker targets (there, the primary's container to the
    # shadow's, over the deployment's network); on Kubernetes the Gateway's HTTPRoute does.
    mirrors = isinstance(target, LocalTarget | DockerTarget) or (
        isinstance(target, KubernetesTarget) and target.gateway is not None
    )
    if target is not None and not mirrors:
        yield doc.problem(
            (*here, "shadow"),
            "shadow traffic is mirrored by a Gateway API HTTPRoute, or on a local or Docker target by the server",
            "expected a kubernetes target with `gateway:`, a docker target or a local target",
            of_key=True,
        )
    for ref, percent in dep.shadow.items():
        if ref in refs:
            yield doc.problem(
                (*here, "shadow", ref),
                f"version {ref!r} is also in traffic",
                "expected a version this deployment does not serve: a shadow's answers are never returned",
                of_key=True,
            )
        if not 1 <= percent <= 100:
            yield doc.problem((*here, "shadow", ref), f"got {percent}", "expected a percent from 1 to 100")
        entry = lock.models.get(dep.model) if lock is not None else None
        if entry is not None and lock is not None and lock.resolve(dep.model, ref) is None:
            yield doc.problem(
                (*here, "shadow", ref),
                f"{dep.model}@{ref} is not in mlops.lock",
                "expected a registered version (register it, then run `mlops-iac lock sync`)",
                of_key=True,
            )


def route_problems(doc: Document, here: PathKey, dep: Deployment, target: Target | None) -> Iterator[Problem]:
    """The HTTPRoute of a deployment behind a Gateway has a rule per version it runs (served or
    shadow, see `model_manifests._route`) and the weighted rule: at most HTTPROUTE_MAX_RULES."""
    if not isinstance(target, KubernetesTarget) or target.gateway is None or dep.kind == "batch":
        return
    versions = len(set(deployed_refs(dep)) | set(dep.shadow or {}))
    rules = versions + 1
    if rules > HTTPROUTE_MAX_RULES:
        yield doc.problem(
            (*here, "versions") if dep.versions is not None else here,
            f"deployment {dep.name or f'{dep.model}-{dep.target}'} runs {versions} versions: its HTTPRoute "
            f"would have {rules} rules (one per version and the weighted one), over the Gateway API's "
            f"limit of {HTTPROUTE_MAX_RULES}",
            f"expected at most {HTTPROUTE_MAX_RULES - 1} versions, shadows included, in one deployment",
            of_key=True,
        )
