"""`build`: how images are made; global, and per model as an override."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from .types import SpecModel

PythonVersion = Literal["3.11", "3.12"]


class Build(SpecModel):
    base_image: str | None = Field(None, description="Base image; default: a pinned slim Python.")
    extra_steps: str | None = Field(None, description="File of Dockerfile steps, relative to mlops.yaml.")
    python_version: PythonVersion | None = None
