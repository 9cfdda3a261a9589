"""The whole of mlops.yaml, as the user wrote it."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from .build import Build
from .deployments import Deployment
from .models import Model
from .monitoring import Monitoring
from .project import Project
from .registry import LocalRegistry, Registry
from .targets import Target
from .types import Name, SpecModel

API_VERSION = "mlops-iac/v1"


class Spec(SpecModel):
    """mlops.yaml: the models, the targets, the deployments and how they are watched."""

    api_version: Literal["mlops-iac/v1"]
    project: Project
    registry: Registry = LocalRegistry(backend="local")
    build: Build = Build()
    models: tuple[Model, ...] = Field(min_length=1)
    targets: dict[Name, Target] = Field(min_length=1)
    deployments: tuple[Deployment, ...] = ()
    monitoring: Monitoring = Monitoring()
