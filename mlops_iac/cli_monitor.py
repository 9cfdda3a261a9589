"""`mlops-iac monitor drift`: the collected data against the version's baseline."""

from __future__ import annotations

import json
import math
import sys
import tempfile
from pathlib import Path
from typing import Any

import click

from .console import registry_file_option as file_option
from .errors import MlopsIacError
from .monitoring.collected import collected_files
from .monitoring.columns import DriftResult
from .monitoring.drift import MIN_ROWS, TooLittleData, check
from .monitoring.report import ks_text, new_text, write_report
from .registry import Registry, Version, parse_ref
from .resolve import Workspace
from .workspace import onnx_file, project_registry

DRIFT_EXIT = 3  # 1 is an error, 2 a usage error: a workflow can tell drift apart
TOO_LITTLE_EXIT = 4  # too few rows to say: neither a pass nor a drift


@click.group()
def monitor() -> None:
    """Watch deployed versions: drift of the collected data against the baseline."""


@monitor.command("drift")
@click.argument("ref")
@click.option(
    "--collected",
    "paths",
    multiple=True,
    required=True,
    type=click.Path(exists=True, path_type=Path),
    help="A file of collected JSON lines, or a folder of them (its *.jsonl files, rotated ones and "
    "each server worker's); repeatable.",
)
@click.option(
    "--threshold",
    type=float,
    default=None,
    help="PSI above which a column has drifted (default: monitoring.drift.threshold, else 0.2).",
)
@click.option(
    "--min-rows",
    type=click.IntRange(min=1),
    default=MIN_ROWS,
    show_default=True,
    help=f"Fewer collected rows of the version than this is an error (exit {TOO_LITTLE_EXIT}), not a pass.",
)
@click.option(
    "--baseline",
    "reference",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    default=None,
    help="Compare against this data (.npy, .npz, .csv, .parquet) and the version's "
    "answers to it (default: monitoring.drift.baseline, else the version's "
    "stored baseline of its sample).",
)
@click.option(
    "--report",
    "report_dir",
    type=click.Path(file_okay=False, path_type=Path),
    default=None,
    help="Write report.md and psi.png here.",
)
@click.option("--json", "as_json", is_flag=True)
@file_option
def drift(
    ref: str,
    paths: tuple[Path, ...],
    threshold: float | None,
    min_rows: int,
    reference: Path | None,
    report_dir: Path | None,
    as_json: bool,
    file: Path,
) -> None:
    """Population stability index and Kolmogorov-Smirnov statistic per input and output column.

    Reads only the records of this version, each value in its column's dtype, and streams
    them (a million need no more memory than ten). Exits 3 when a column's PSI is over the
    threshold, 4 when there are fewer rows than --min-rows, 1 on a file it cannot read (with
    its line), so a scheduled workflow can tell drift from a broken check.
    """
    registry, ws = project_registry(file, against_lock=False)
    version = registry.resolve(parse_ref(ref))
    deployed = [d.monitoring for d in (ws.resolved.deployments if ws else ()) if d.model == version.model]
    if threshold is None:
        threshold = deployed[0].drift_threshold if deployed else 0.2
    if reference is None and ws is not None and deployed:
        reference = _configured_reference(ws, version.model, deployed[0].drift_baseline)
    base, source = _load_baseline(registry, version, reference)
    if base.get("version", 1) < 2:
        click.secho(
            f"warning: the baseline of {version.model}@{version.version} predates dtype-aware bins and "
            f"may report drift on unchanged data; `mlops-iac convert {version.model}@{version.version}` "
            "rebuilds it",
            fg="yellow",
            err=True,
        )
    try:
        results, records = check(
            base, collected_files(paths), threshold, model=version.model, version=version.version, min_rows=min_rows
        )
    except TooLittleData as exc:
        click.secho(f"error: {exc}", fg="red", err=True)
        sys.exit(TOO_LITTLE_EXIT)
    drifted = [r for r in results if r.drifted]
    if as_json:
        click.echo(
            json.dumps(
                {
                    "records": records,
                    "threshold": threshold,
                    "baseline": source,
                    "columns": [r.__dict__ for r in results],
                },
                indent=2,
                sort_keys=True,
                default=str,
            )
        )
    else:
        click.echo(f"baseline: {source}")
        _table(results, records, threshold)
    if report_dir is not None:
        write_report(report_dir, f"{version.model}@{version.version}", base, results, records, threshold)
    if drifted:
        click.secho(
            f"drift: {len(drifted)} column(s) over PSI {threshold:g}: "
            + ", ".join(
                r.name + (f" ({r.new_categories:,} new categories in {r.new_rows:,} rows)" if r.new_categories else "")
                for r in drifted
            ),
            fg="red",
            err=True,
        )
        sys.exit(DRIFT_EXIT)
    if not as_json:
        click.echo(f"no drift: every column under PSI {threshold:g}")


def _configured_reference(ws: Workspace, model: str, configured: str | None) -> Path | None:
    """monitoring.drift.baseline when it names other data than the model's sample (whose
    baseline `convert` already stored with the version)."""
    sample = ws.resolved.model(model).sample
    return ws.root / configured if configured is not None and configured != sample else None


def _load_baseline(registry: Registry, version: Version, reference: Path | None) -> tuple[dict[str, Any], str]:
    ref = parse_ref(f"{version.model}@{version.version}")
    if reference is not None:
        from .convert.data import read_features
        from .workspace.conversion import baseline

        with onnx_file(registry, version) as model:  # its answers to the reference data are the baseline
            return baseline(model.read_bytes(), read_features(reference)), str(reference)
    if "baseline" not in version.artifacts:
        raise MlopsIacError(f"{version.model}@{version.version} has no baseline; `mlops-iac convert` makes it")
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "baseline.json"
        registry.pull(ref, path, "baseline")
        return json.loads(path.read_text()), f"the sample stored with {version.model}@{version.version}"


def _table(results: list[DriftResult], records: int, threshold: float) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table(
        "column",
        "kind",
        "PSI",
        "KS",
        "KS p-value",
        "values",
        "new categories",
        "drift",
        title=f"{records:,} records, PSI threshold {threshold:g}",
    )
    for r in sorted(results, key=lambda r: -1 if math.isnan(r.psi) else -r.psi):
        table.add_row(
            r.name,
            r.kind,
            f"{r.psi:.4f}",
            ks_text(r.ks, ".4f"),
            ks_text(r.ks_pvalue, ".2g"),
            f"{r.count:,}",
            new_text(r),
            "DRIFT" if r.drifted else "" if r.count else "no data",
        )
    Console(width=140).print(table)
