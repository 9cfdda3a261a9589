"""`mlops-iac convert`: the only command that loads native (pickle, joblib, torch) artifacts."""

from __future__ import annotations

from pathlib import Path

import click

from .console import convert_version, registry_file_option
from .registry import parse_ref
from .workspace import project_registry


@click.command()
@click.argument("ref")
@click.option(
    "--sample",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    help="Inputs for the parity check (.npy, .npz, .csv, .parquet); default: the model's `sample` in mlops.yaml.",
)
@click.option("--no-speed", is_flag=True, help="Skip timing native against ONNX.")
@registry_file_option
def convert(ref: str, sample: Path | None, no_speed: bool, file: Path) -> None:
    """Convert a registered version to ONNX, prove parity, validate, measure the speed-up.

    The ONNX model is stored as a linked artifact of the same version, and the results go to
    the registry and to mlops.lock.

    A pipeline fitted on a DataFrame becomes a model with one input per column, named and
    typed as the sample's columns (give a .parquet or .csv sample). A missing string is ""
    (a string tensor has no null): fill string gaps with "" before training.

    SAFETY: loading a pickle, joblib or torch file runs code from it. This is the only
    mlops-iac command that loads native artifacts; convert only artifacts you trust.
    Everything downstream (serve, profile, build) loads ONNX only.
    """
    registry, ws = project_registry(file, against_lock=False)
    version = registry.resolve(parse_ref(ref))
    convert_version(registry, ws, version, sample, speed=not no_speed)
