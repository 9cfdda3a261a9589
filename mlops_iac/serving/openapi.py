"""The OpenAPI document of the server's routes (served at /v2/openapi.json, and committed as
schemas/server.openapi.json; a test fails when the committed copy is stale)."""

from __future__ import annotations

from typing import Any

from .. import __version__
from .protocol import DTYPES

_ERROR = {
    "description": "What was wrong and what was expected.",
    "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}},
}
_NAME = {"name": "name", "in": "path", "required": True, "schema": {"type": "string"}}
_META = {"$ref": "#/components/schemas/TensorMetadata"}
_CONFIG_TENSOR = {
    "type": "object",
    "required": ["name", "data_type", "dims"],
    "properties": {
        "name": {"type": "string"},
        "data_type": {"type": "string"},
        "dims": {"type": "array", "items": {"type": "integer"}},
    },
}
_DURATION = {
    "type": "object",
    "required": ["count", "ns"],
    "properties": {"count": {"type": "integer", "minimum": 0}, "ns": {"type": "integer", "minimum": 0}},
}
_VERSION = {"name": "version", "in": "path", "required": True, "schema": {"type": "string"}}


def _json(ref: str, description: str) -> dict[str, Any]:
    return {
        "description": description,
        "content": {"application/json": {"schema": {"$ref": f"#/components/schemas/{ref}"}}},
    }


def _infer(params: list[dict[str, Any]]) -> dict[str, Any]:
    return {
        "post": {
            "summary": "Run inference (JSON tensors, or the binary tensor data extension).",
            "parameters": [
                *params,
                {
                    "name": "Inference-Header-Content-Length",
                    "in": "header",
                    "required": False,
                    "schema": {"type": "integer", "minimum": 1},
                },
            ],
            "requestBody": {
                "required": True,
                "content": {
                    "application/json": {"schema": {"$ref": "#/components/schemas/InferenceRequest"}},
                    "application/octet-stream": {"schema": {"type": "string", "format": "binary"}},
                },
            },
            "responses": {
                "200": _json("InferenceResponse", "The outputs."),
                "400": _ERROR,
                "401": _ERROR,
                "404": _ERROR,
                "413": _ERROR,
                "415": _ERROR,
            },
        }
    }


def _get(
    ref: str, description: str, params: list[dict[str, Any]] | None = None, extra: dict[str, Any] | None = None
) -> dict[str, Any]:
    op: dict[str, Any] = {"summary": description, "responses": {"200": _json(ref, description), **(extra or {})}}
    if params:
        op["parameters"] = params
    return {"get": op}


def _tensor(with_data: bool) -> dict[str, Any]:
    properties: dict[str, Any] = {
        "name": {"type": "string", "minLength": 1},
        "datatype": {"type": "string", "enum": list(DTYPES)},
        "shape": {"type": "array", "items": {"type": "integer", "minimum": 0}},
        "parameters": {"type": "object"},
    }
    if with_data:
        properties["data"] = {"type": "array"}
    return {"type": "object", "required": ["name", "datatype", "shape"], "properties": properties}


def document() -> dict[str, Any]:
    model_errors = {"404": _ERROR, "401": _ERROR}
    return {
        "openapi": "3.0.3",
        "info": {"title": "mlops-iac model server (Open Inference Protocol v2)", "version": __version__},
        "paths": {
            "/v2/health/live": _get("Live", "The process is up."),
            "/v2/health/ready": _get(
                "Ready", "Every model is loaded and warm.", extra={"503": _json("Ready", "Still loading.")}
            ),
            "/v2": _get("ServerMetadata", "Server name, version and extensions.", extra={"401": _ERROR}),
            "/v2/models/{name}": _get("ModelMetadata", "Inputs and outputs of a model.", [_NAME], model_errors),
            "/v2/models/{name}/ready": _get("ModelReady", "Whether a model is ready.", [_NAME], model_errors),
            "/v2/models/{name}/versions/{version}": _get(
                "ModelMetadata", "Inputs and outputs of one version.", [_NAME, _VERSION], model_errors
            ),
            "/v2/models/{name}/versions/{version}/ready": _get(
                "ModelReady", "Whether one version is ready.", [_NAME, _VERSION], model_errors
            ),
            "/v2/models/{name}/config": _get("ModelConfig", "Triton's model configuration.", [_NAME], model_errors),
            "/v2/models/{name}/versions/{version}/config": _get(
                "ModelConfig", "Triton's model configuration of one version.", [_NAME, _VERSION], model_errors
            ),
            "/v2/models/{name}/stats": _get(
                "ModelStatistics", "Triton's statistics of every version.", [_NAME], model_errors
            ),
            "/v2/models/{name}/versions/{version}/stats": _get(
                "ModelStatistics", "Triton's statistics of one version.", [_NAME, _VERSION], model_errors
            ),
            "/v2/models/stats": _get("ModelStatistics", "Triton's statistics of every model.", extra={"401": _ERROR}),
            "/v2/models/{name}/infer": _infer([_NAME]),
            "/v2/models/{name}/versions/{version}/infer": _infer([_NAME, _VERSION]),
        },
        "components": {
            "schemas": {
                "Error": {"type": "object", "required": ["error"], "properties": {"error": {"type": "string"}}},
                "Live": {"type": "object", "properties": {"live": {"type": "boolean"}}},
                "Ready": {"type": "object", "properties": {"ready": {"type": "boolean"}}},
                "ModelReady": {
                    "type": "object",
                    "properties": {"name": {"type": "string"}, "ready": {"type": "boolean"}},
                },
                "ServerMetadata": {
                    "type": "object",
                    "required": ["name", "version", "extensions"],
                    "properties": {
                        "name": {"type": "string"},
                        "version": {"type": "string"},
                        "extensions": {"type": "array", "items": {"type": "string"}},
                    },
                },
                "TensorMetadata": {
                    "type": "object",
                    "required": ["name", "datatype", "shape"],
                    "properties": {
                        "name": {"type": "string"},
                        "datatype": {"type": "string"},
                        "shape": {"type": "array", "items": {"type": "integer"}},
                    },
                },
                "ModelMetadata": {
                    "type": "object",
                    "required": ["name", "versions", "platform", "inputs", "outputs"],
                    "properties": {
                        "name": {"type": "string"},
                        "platform": {"type": "string"},
                        "versions": {"type": "array", "items": {"type": "string"}},
                        "inputs": {"type": "array", "items": _META},
                        "outputs": {"type": "array", "items": _META},
                    },
                },
                "ModelConfig": {
                    "type": "object",
                    "required": ["name", "platform", "max_batch_size", "input", "output"],
                    "properties": {
                        "name": {"type": "string"},
                        "platform": {"type": "string"},
                        "max_batch_size": {"type": "integer", "minimum": 0},
                        "input": {"type": "array", "items": _CONFIG_TENSOR},
                        "output": {"type": "array", "items": _CONFIG_TENSOR},
                    },
                },
                "ModelStatistics": {
                    "type": "object",
                    "required": ["model_stats"],
                    "properties": {
                        "model_stats": {
                            "type": "array",
                            "items": {
                                "type": "object",
                                "required": [
                                    "name",
                                    "version",
                                    "inference_count",
                                    "execution_count",
                                    "inference_stats",
                                ],
                                "properties": {
                                    "name": {"type": "string"},
                                    "version": {"type": "string"},
                                    "last_inference": {"type": "integer"},
                                    "inference_count": {"type": "integer"},
                                    "execution_count": {"type": "integer"},
                                    "inference_stats": {"type": "object", "additionalProperties": _DURATION},
                                },
                            },
                        }
                    },
                },
                "InferenceRequest": {
                    "type": "object",
                    "required": ["inputs"],
                    "properties": {
                        "id": {"type": "string"},
                        "parameters": {"type": "object"},
                        "inputs": {"type": "array", "minItems": 1, "items": _tensor(True)},
                        "outputs": {
                            "type": "array",
                            "items": {
                                "type": "object",
                                "required": ["name"],
                                "properties": {"name": {"type": "string"}, "parameters": {"type": "object"}},
                            },
                        },
                    },
                },
                "InferenceResponse": {
                    "type": "object",
                    "required": ["model_name", "outputs"],
                    "properties": {
                        "model_name": {"type": "string"},
                        "model_version": {"type": "string"},
                        "id": {"type": "string"},
                        "outputs": {"type": "array", "items": _tensor(True)},
                    },
                },
            }
        },
    }
