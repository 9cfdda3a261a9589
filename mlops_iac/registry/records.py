"""What the registry stores about a model: its versions, aliases and history. Immutable."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from ..spec.models import Framework

Status = Literal["registered", "validated", "rejected"]
Digest = str


class Record(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Artifact(Record):
    """A file derived from a version (e.g. its ONNX conversion), linked by digest."""

    digest: Digest
    size: int
    filename: str
    derived_from: Digest
    created: str
    facts: dict[str, Any] = {}


class Lineage(Record):
    source: str
    filename: str
    created: str
    git_commit: str | None = None
    git_repository: str | None = None
    ci_run: str | None = None
    user: str | None = None


class Version(Record):
    model: str
    version: int
    digest: Digest
    size: int
    framework: Framework
    lineage: Lineage
    signature: dict[str, Any] | None = None
    metrics: dict[str, float] = {}
    tags: dict[str, str] = {}
    status: Status = "registered"
    artifacts: dict[str, Artifact] = {}


class Event(Record):
    """One entry of a model's history: who did what to which version, when."""

    time: str
    action: Literal["register", "tag", "untag", "alias", "unalias", "delete", "status", "link", "import"]
    version: int | None = None
    detail: dict[str, Any] = {}


class ModelIndex(Record):
    model: str
    next_version: int = Field(1, ge=1)  # never reused, even after a delete
    versions: dict[int, Version] = {}
    aliases: dict[str, int] = {}
    history: tuple[Event, ...] = ()

    def by_digest(self, digest: Digest) -> Version | None:
        return next((v for _, v in sorted(self.versions.items()) if v.digest == digest), None)
