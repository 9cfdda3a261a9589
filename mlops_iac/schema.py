"""The JSON Schema of mlops.yaml, generated from the pydantic models (never by hand)."""

from __future__ import annotations

from typing import Any

from .artifacts import canonical_json
from .spec import Spec

SCHEMA_ID = "urn:mlops-iac:schema:mlops.v1"  # a name, not a place: the schema ships with the tool
SCHEMA_FILE = "schemas/mlops.v1.schema.json"


def json_schema() -> dict[str, Any]:
    schema = Spec.model_json_schema(by_alias=True, mode="validation")
    return {
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        "$id": SCHEMA_ID,
        "title": "mlops.yaml (mlops-iac/v1)",
        **schema,
    }


def json_schema_text() -> str:
    return canonical_json(json_schema())


OPENAPI_FILE = "schemas/server.openapi.json"


def openapi_text() -> str:
    from .serving.openapi import document

    return canonical_json(document())
