"""`mlops-iac smoke`: after a deploy, does the endpoint answer as the pinned model does?"""

from __future__ import annotations

import json
import os
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import click
import numpy as np

from .console import registry_file_option as file_option
from .contract import API_KEY_ENV
from .convert.data import complete_rows, rows_of, v2_tensors
from .convert.onnx_tools import run, session
from .convert.parity import compare
from .errors import MlopsIacError
from .registry import parse_ref
from .workspace import features as sample_rows
from .workspace import model_spec, onnx_file, project_registry


@click.command()
@click.argument("ref")
@click.option("--url", required=True, help="The deployed server's base URL, e.g. https://models.example.com.")
@click.option(
    "--sample",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    default=None,
    help="Inputs to send (default: the model's sample in mlops.yaml).",
)
@click.option("--rows", type=int, default=32, show_default=True, help="How many sample rows to send.")
@click.option(
    "--api-key-env",
    default=API_KEY_ENV,
    show_default=True,
    help="The environment variable holding the bearer token (for auth: key).",
)
@file_option
def smoke(ref: str, url: str, sample: Path | None, rows: int, api_key_env: str, file: Path) -> None:
    """Send the model's sample to a deployed endpoint and check the answers against the pinned
    ONNX model, within the parity tolerances recorded in mlops.lock. Exits 1 on a mismatch."""
    registry, ws = project_registry(file, against_lock=False)
    version = registry.resolve(parse_ref(ref))
    facts = ws.lock.version(version.model, version.version) if ws else None
    parity = facts.onnx.parity if facts and facts.onnx else {}
    atol, rtol = float(parity.get("atol", 1e-5)), float(parity.get("rtol", 1e-4))
    with onnx_file(registry, version) as model:
        # The pinned ONNX model is the reference, so its signature can make rows without a sample.
        # Rows with a missing number are left out: the request is JSON, and JSON has no NaN.
        x = rows_of(
            complete_rows(sample_rows(sample, model_spec(ws, version.model), ws, "onnx", model, click.echo)),
            slice(0, rows),
        )
        sess = session(model.read_bytes())
        names = [o.name for o in sess.get_outputs()]
        expected = run(sess, x)
    answer = _infer(url, version.model, version.version, v2_tensors(sess.get_inputs(), x), os.environ.get(api_key_env))
    got = {o["name"]: np.asarray(o["data"]).reshape(o["shape"]) for o in answer["outputs"]}
    missing = [n for n in names if n not in got]
    if missing:
        raise MlopsIacError(f"the endpoint did not return {', '.join(missing)}")
    kinds = ["label" if e.dtype.kind in "iubOSU" else "float" for e in expected]
    result = compare(expected, [got[n] for n in names], names, kinds, atol, rtol)  # type: ignore[arg-type]
    click.echo(f"{version.model}@{version.version} at {url}: {len(x)} rows")
    click.echo(result.describe())
    if not result.passed:
        raise MlopsIacError("the deployed endpoint does not answer as the pinned model does")
    click.echo("smoke test passed")


def _infer(url: str, model: str, version: int, inputs: list[dict[str, Any]], key: str | None) -> dict:  # type: ignore[type-arg]
    body = json.dumps({"id": "mlops-iac-smoke", "inputs": inputs})
    headers = {"Content-Type": "application/json", **({"Authorization": f"Bearer {key}"} if key else {})}
    if not url.startswith(("http://", "https://")):
        raise MlopsIacError(f"--url must be an http:// or https:// URL, got {url!r}")
    target = f"{url.rstrip('/')}/v2/models/{model}/versions/{version}/infer"
    request = urllib.request.Request(target, data=body.encode(), headers=headers, method="POST")  # noqa: S310
    try:
        with urllib.request.urlopen(request, timeout=30) as response:  # noqa: S310 - the user's endpoint
            return json.load(response)  # type: ignore[no-any-return]
    except urllib.error.HTTPError as exc:
        raise MlopsIacError(f"{target} answered {exc.code}: {exc.read()[:300].decode(errors='replace')}") from None
    except (urllib.error.URLError, OSError) as exc:
        raise MlopsIacError(f"cannot reach {target}: {exc}") from None
