"""Scalar types of mlops.yaml, each parsed by one function that fails with one clear error.

Plain `int | str` unions would give one pydantic error per branch (with locations like
`version.int`); a single before-validator gives the user one sentence with what is allowed.
"""

from __future__ import annotations

import json
import re
from typing import Annotated, Any, Literal

from pydantic import BaseModel, BeforeValidator, ConfigDict, WithJsonSchema
from pydantic.alias_generators import to_camel
from pydantic_core import PydanticCustomError

DNS_LABEL = r"^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?$"
DIGEST = r"^sha256:[0-9a-f]{64}$"
_DNS_RE = re.compile(DNS_LABEL)
_DIGEST_RE = re.compile(DIGEST)
_MILLI_RE = re.compile(r"^([0-9]+)m$")
_CORES_RE = re.compile(r"^[0-9]+(\.[0-9]+)?$")
_MEMORY_RE = re.compile(r"^([0-9]+(?:\.[0-9]+)?)(Ki|Mi|Gi|Ti|k|M|G|T)?$")
_MEMORY_UNITS = {
    None: 1,
    "k": 10**3,
    "M": 10**6,
    "G": 10**9,
    "T": 10**12,
    "Ki": 2**10,
    "Mi": 2**20,
    "Gi": 2**30,
    "Ti": 2**40,
}

Auto = Literal["auto"]


class SpecModel(BaseModel):
    """Base of everything a user writes: camelCase keys, nothing unknown, immutable."""

    model_config = ConfigDict(
        extra="forbid", frozen=True, alias_generator=to_camel, populate_by_name=False, validate_default=True
    )


def shown(value: Any) -> str:
    """How a found value is quoted in messages: strings in double quotes, YAML words."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if value is None:
        return "null"
    if isinstance(value, dict):
        return "a mapping"
    if isinstance(value, list | tuple):
        return "a list"
    if isinstance(value, str):
        text = json.dumps(value)
        return text if len(text) <= 60 else text[:57] + '..."'
    return str(value)


def invalid(value: Any, allowed: str) -> PydanticCustomError:
    """An error whose context carries what was found and what is allowed."""
    return PydanticCustomError("mlops", "got {got}; {allowed}", {"got": shown(value), "allowed": allowed})


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def parse_name(value: Any) -> str:
    if isinstance(value, str) and _DNS_RE.match(value):
        return value
    raise invalid(
        value,
        "expected a DNS-1123 label: lowercase letters, digits and '-', "
        "starting and ending with a letter or digit, at most 63 characters",
    )


def parse_cpu(value: Any) -> float | str:
    allowed = 'expected a number of cores like 0.5 or "500m", or "auto"'
    if value == "auto":
        return "auto"
    if _is_number(value) and value > 0:
        return float(value)
    if isinstance(value, str):
        match = _MILLI_RE.match(value)
        if match and int(match.group(1)) > 0:
            return int(match.group(1)) / 1000
        if _CORES_RE.match(value) and float(value) > 0:  # "1", "0.5": Kubernetes writes cores so too
            return float(value)
    raise invalid(value, allowed)


def parse_memory(value: Any) -> int | str:
    allowed = 'expected bytes like 536870912 or a quantity like "512Mi" or "1Gi", or "auto"'
    if value == "auto":
        return "auto"
    if _is_number(value) and value > 0 and float(value).is_integer():
        return int(value)
    if isinstance(value, str):
        match = _MEMORY_RE.match(value)
        if match:
            size = int(float(match.group(1)) * _MEMORY_UNITS[match.group(2)])
            if size > 0:
                return size
    raise invalid(value, allowed)


def parse_replicas(value: Any) -> int | str:
    if value == "auto":
        return "auto"
    if isinstance(value, int) and not isinstance(value, bool) and value >= 0:
        return value
    raise invalid(value, 'expected a whole number of replicas (0 or more), or "auto"')


def parse_version_ref(value: Any) -> int | str:
    """A registered version by number, by content digest, or by alias."""
    if isinstance(value, int) and not isinstance(value, bool) and value >= 1:
        return value
    if isinstance(value, str):
        if value.isdigit() and int(value) >= 1:
            return int(value)
        if _DIGEST_RE.match(value) or (_DNS_RE.match(value) and not value.isdigit()):
            return value
    raise invalid(
        value, 'expected a version number (1, 2, ...), an alias like "production", or a digest "sha256:<64 hex digits>"'
    )


def parse_alias(value: Any) -> str:
    if isinstance(value, str) and _DNS_RE.match(value) and not value.isdigit():
        return value
    raise invalid(value, "expected an alias: a DNS-1123 label that is not a number, like production")


_NAME_SCHEMA = {"type": "string", "pattern": DNS_LABEL, "maxLength": 63}

Name = Annotated[str, BeforeValidator(parse_name), WithJsonSchema(_NAME_SCHEMA)]
AliasName = Annotated[
    str, BeforeValidator(parse_alias), WithJsonSchema({**_NAME_SCHEMA, "not": {"pattern": "^[0-9]+$"}})
]
Cpu = Annotated[
    float | str,
    BeforeValidator(parse_cpu),
    WithJsonSchema(
        {
            "anyOf": [
                {"type": "number", "exclusiveMinimum": 0},
                {"type": "string", "pattern": "^[0-9]+m$"},
                {"type": "string", "pattern": "^[0-9]+(\\.[0-9]+)?$"},
                {"const": "auto"},
            ],
            "description": 'CPU cores: 0.5, "500m" or "auto" (from the profile)',
        }
    ),
]
Memory = Annotated[
    int | str,
    BeforeValidator(parse_memory),
    WithJsonSchema(
        {
            "anyOf": [
                {"type": "integer", "exclusiveMinimum": 0},
                {"type": "string", "pattern": r"^[0-9]+(\.[0-9]+)?(Ki|Mi|Gi|Ti|k|M|G|T)?$"},
                {"const": "auto"},
            ],
            "description": 'Memory: bytes, "512Mi", "1Gi" or "auto" (from the profile)',
        }
    ),
]
Replicas = Annotated[
    int | str,
    BeforeValidator(parse_replicas),
    WithJsonSchema({"anyOf": [{"type": "integer", "minimum": 0}, {"const": "auto"}]}),
]
VersionRef = Annotated[
    int | str,
    BeforeValidator(parse_version_ref),
    WithJsonSchema(
        {
            "anyOf": [
                {"type": "integer", "minimum": 1},
                {"type": "string", "pattern": DIGEST},
                {"type": "string", "pattern": DNS_LABEL},
            ],
            "description": "a version number, a sha256 digest or an alias",
        }
    ),
]
