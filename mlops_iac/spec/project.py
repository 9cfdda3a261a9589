"""`project`: who this file belongs to."""

from __future__ import annotations

from pydantic import Field

from .types import Name, SpecModel


class Project(SpecModel):
    name: Name = Field(description="The project's name; prefixes generated resource names.")
    description: str = ""
