"""The server against the Open Inference Protocol's own OpenAPI document (kept under
tests/conformance/ with its source and commit), run with schemathesis and every check it has:
no 5xx, only documented status codes, content types and response schemas as documented.

The document names its path parameters `${MODEL_NAME}` and `${MODEL_VERSION}`; they become
ordinary path parameters bound to the model the server serves (iris, version 1), so every
request reaches a real model instead of a 404. That binding is the only change to the document.
"""

from __future__ import annotations

import copy
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import schemathesis
import yaml
from hypothesis import HealthCheck, settings
from schemathesis.specs.openapi.checks import positive_data_acceptance, status_code_conformance

from .server_fixtures import Models, Running, build_models, model_entry, running_server

SPEC = Path(__file__).parent / "conformance" / "open_inference_rest.yaml"
BOUND = {"MODEL_NAME": "iris", "MODEL_VERSION": "1"}


def bound(document: dict[str, Any]) -> dict[str, Any]:
    """`${NAME}` placeholders as path parameters that take the served model's name and version."""
    out = copy.deepcopy(document)
    paths = {}
    for path, item in out["paths"].items():
        for parameter in item.get("parameters", []):
            if parameter["in"] == "path" and parameter["name"] in BOUND:
                parameter["schema"] = {"type": "string", "enum": [BOUND[parameter["name"]]]}
        paths[path.replace("${", "{")] = item
    out["paths"] = paths
    return out


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Running]:
    models: Models = build_models(tmp_path_factory.mktemp("conformance-models"))
    with running_server(models, {"models": [model_entry(models, "iris")]}) as running:
        yield running


schema = schemathesis.openapi.from_dict(bound(yaml.safe_load(SPEC.read_text())))

# Statuses the document does not list, which the server answers by choice (README, "Where the
# protocol leaves room"): status -> what it must be about.
CHOICES = {
    404: ("is not served here", "has no version"),  # names other than the bound ones (negative data)
    405: ("takes",),
}  # a method the path does not take (TRACE, ...), answered with `Allow`


@schema.parametrize()
@settings(max_examples=30, deadline=None, suppress_health_check=list(HealthCheck))
def test_the_protocols_openapi_document_finds_nothing(case: Any, server: Running) -> None:
    """Every schemathesis check; the status check is ours, so that a documented choice passes
    and anything else fails as schemathesis's own check would fail it."""
    response = case.call(base_url=f"http://{server.url}")
    excluded = [status_code_conformance]
    if case.operation.path.endswith("/infer"):
        # Schema-valid is not model-valid: `inputs: []` fits the document, not iris's signature.
        # The document lists 400 for that (its error body is checked against the document).
        excluded.append(positive_data_acceptance)
    case.validate_response(response, excluded_checks=excluded)
    documented = {int(code) for code in case.operation.definition.raw["responses"]}
    if response.status_code not in documented:
        said = CHOICES.get(response.status_code, ())
        assert any(text in response.text for text in said), (
            case.method,
            case.formatted_path,
            response.status_code,
            response.text,
        )
        if response.status_code == 404:
            assert case.path_parameters != BOUND  # only for what the binding does not name
        else:
            (allow,) = response.headers["allow"]
            assert allow in ("GET", "POST") and case.method != allow


def test_the_binding_reaches_the_model(server: Running) -> None:
    """The bound paths are the served model's: its metadata, its readiness, a real answer."""
    operations = {f"{o.method.upper()} {o.path}" for o in (r.ok() for r in schema.get_all_operations())}
    assert "POST /v2/models/{MODEL_NAME}/versions/{MODEL_VERSION}/infer" in operations
    status, doc = server.json("GET", "/v2/models/iris/versions/1")
    assert status == 200 and doc["name"] == "iris"
    status, doc = server.json(
        "POST",
        "/v2/models/iris/versions/1/infer",
        {"inputs": [{"name": "input", "datatype": "FP32", "shape": [1, 4], "data": [5.1, 3.5, 1.4, 0.2]}]},
    )
    assert status == 200 and doc["model_name"] == "iris"
