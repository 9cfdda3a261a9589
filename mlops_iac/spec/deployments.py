"""`deployments[]`: which versions of which model run on which target, how big, how split."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from .batch import Batch
from .monitoring import Monitoring
from .rollout import Rollout
from .types import AliasName, Cpu, Memory, Name, Replicas, SpecModel, VersionRef


class ReplicaRange(SpecModel):
    min: Replicas = "auto"
    max: Replicas = "auto"


class Hardware(SpecModel):
    cpu: Cpu = "auto"
    memory: Memory = "auto"
    gpu: int = Field(0, ge=0, le=16, description="GPUs per replica.")
    replicas: ReplicaRange = ReplicaRange()


class Deployment(SpecModel):
    name: Name | None = Field(None, description="Default: <model>-<target>.")
    kind: Literal["online", "batch"] = Field(
        "online", description=("online: a model server answering requests; batch: a job scoring datasets (see batch).")
    )
    model: Name
    version: VersionRef | None = Field(None, description="One version: a number or a digest.")
    alias: AliasName | None = Field(None, description="One version, by alias (e.g. production).")
    versions: tuple[VersionRef, ...] | None = Field(
        None, min_length=1, description="Several versions side by side (blue-green, canary)."
    )
    traffic: dict[VersionRef, int] | None = Field(
        None, description="Percent of requests per deployed version; sums to 100."
    )
    target: Name
    hardware: Hardware = Hardware()
    auth: Literal["none", "key"] = "none"
    monitoring: Monitoring | None = None
    shadow: dict[VersionRef, int] | None = Field(
        None,
        description="Mirror this percent of requests to a version that serves no traffic; its answers "
        "are never returned (Kubernetes targets with a gateway: the HTTPRoute's RequestMirror; local "
        "targets: the server, after answering).",
    )
    rollout: Rollout | None = Field(
        None, description="Promote the canary (the last of versions) on evidence, or roll it back."
    )
    batch: Batch | None = Field(None, description="What a kind: batch deployment scores.")
