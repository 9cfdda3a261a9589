"""Pinned versions as types: what `plan()` hands downstream, so nothing there asserts a digest.

A resolved version may still name an alias or a version the lock does not pin (its number
and digest are None). `plan()` turns every deployment into a `PinnedDeployment` (or says
which versions are not pinned); a Pulumi stack takes its plan's deployments as
`BuiltDeployment`s, whose versions carry their ONNX digest and pushed image as well.
Subclasses with the same fields, so plan.json is the same bytes.
"""

from __future__ import annotations

from collections.abc import Iterable

from .errors import PlanError
from .resolve import ResolvedDeployment, ResolvedVersion


class PinnedVersion(ResolvedVersion):
    """A version mlops.lock pins: its number and registry digest are facts."""

    number: int
    digest: str


class BuiltVersion(PinnedVersion):
    """A pinned version with its ONNX conversion and its image pushed by digest: deployable."""

    onnx_digest: str
    image: str


class PinnedDeployment(ResolvedDeployment):
    versions: tuple[PinnedVersion, ...]


class BuiltDeployment(PinnedDeployment):
    versions: tuple[BuiltVersion, ...]


def pin_all(deployments: Iterable[ResolvedDeployment]) -> tuple[PinnedDeployment, ...]:
    """Every deployment with its versions pinned; deployment reads only mlops.yaml and
    mlops.lock, so a version the lock does not pin is an error (all of them named at once)."""
    deployments = tuple(deployments)
    missing = [
        f"{d.name}: {d.model}@{v.ref}" for d in deployments for v in d.versions if v.number is None or v.digest is None
    ]
    if missing:
        raise PlanError(
            "these deployed versions are not pinned in mlops.lock (register them "
            "with `mlops-iac register`, or fix the version):\n  " + "\n  ".join(missing)
        )
    return tuple(pin(d) for d in deployments)


def pin(dep: ResolvedDeployment) -> PinnedDeployment:
    """The deployment with the versions the lock pins (the others left out)."""
    pinned = tuple(PinnedVersion(**dict(v)) for v in dep.versions if v.number is not None and v.digest is not None)
    return PinnedDeployment(**{**dict(dep), "versions": pinned})


def unbuilt(dep: PinnedDeployment) -> list[str]:
    return [f"{dep.name}: {dep.model}@{v.number}" for v in dep.versions if v.image is None or v.onnx_digest is None]


def built(dep: PinnedDeployment) -> BuiltDeployment:
    """The deployment as a stack deploys it: every version converted and pushed."""
    missing = unbuilt(dep)
    if missing:
        raise PlanError(
            "these versions have no pushed image in mlops.lock (run `mlops-iac build MODEL@N "
            "--push REGISTRY`):\n  " + "\n  ".join(missing)
        )
    versions = tuple(BuiltVersion(**dict(v)) for v in dep.versions)
    return BuiltDeployment(**{**dict(dep), "versions": versions})
