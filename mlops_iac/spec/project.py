"""`project`: who this file belongs to."""

from __future__ import annotations

from typing import Annotated, Any

from pydantic import BeforeValidator, Field

from .types import Name, SpecModel, invalid

MLOPS_IAC = "mlops-iac"


def parse_requirement(value: Any) -> str:
    """A PEP 508 requirement for mlops-iac itself, as pip reads it from requirements.txt."""
    if value == MLOPS_IAC:  # the default: no need to load packaging's parser on every command
        return MLOPS_IAC
    from packaging.requirements import InvalidRequirement, Requirement

    allowed = (
        'expected a requirement for mlops-iac, like "mlops-iac @ git+https://github.com/ORG/mlops-iac@COMMIT" '
        'or "mlops-iac @ file:///opt/wheels/mlops_iac-0.1.0-py3-none-any.whl"'
    )
    try:
        requirement = Requirement(value) if isinstance(value, str) and "\n" not in value else None
    except InvalidRequirement:
        requirement = None
    if requirement is None or requirement.name.lower().replace("_", "-") != MLOPS_IAC:
        raise invalid(value, allowed)
    return str(requirement)


Requirement = Annotated[str, BeforeValidator(parse_requirement)]


class Project(SpecModel):
    name: Name = Field(description="The project's name; prefixes generated resource names.")
    description: str = ""
    mlops_iac: Requirement = Field(
        MLOPS_IAC,
        description="How the Pulumi program installs mlops-iac (stacks/requirements.txt): a PEP 508 "
        "requirement. Default: by name, from the wheels pip is pointed at (PIP_FIND_LINKS); for CI, a direct "
        "reference to the commit the workflow runs, e.g. mlops-iac @ git+https://github.com/ORG/mlops-iac@COMMIT.",
    )
