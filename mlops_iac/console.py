"""What the commands share on the command line: the `--file` options, the conversion report as
printed, and conversion run to its end (a version that fails validation exits 1).

In the CLI layer but not a command: `cli*.py` modules import this, never each other.
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

import click

from .errors import Problem

if TYPE_CHECKING:  # every command imports this module: what it loads, `--help` pays for
    from .convert import Report
    from .registry import Registry, Version
    from .resolve import Workspace

DEFAULT_FILE = "mlops.yaml"
F = TypeVar("F", bound=Callable[..., Any])


def file_option(func: F) -> F:
    return click.option(
        "-f",
        "--file",
        "file",
        default=DEFAULT_FILE,
        show_default=True,
        type=click.Path(dir_okay=False, path_type=Path),
        help="The mlops.yaml to read.",
    )(func)


def registry_file_option(func: Any) -> Any:
    return click.option(
        "-f",
        "--file",
        "file",
        default="mlops.yaml",
        show_default=True,
        type=click.Path(dir_okay=False, path_type=Path),
        help="The mlops.yaml whose registry to use.",
    )(func)


def convert_version(
    registry: Registry, ws: Workspace | None, version: Version, sample: Path | None, *, speed: bool
) -> None:
    """Convert, store and pin one version, printing the report; exit 1 when validation rejected it."""
    from .workspace.conversion import convert_version as convert_and_store

    report = convert_and_store(registry, ws, version, sample, speed=speed, echo=click.echo, show=print_report)
    if report.validation is not None and not report.validation["passed"]:
        click.secho(f"{version.model}@{version.version} REJECTED by validation", fg="red", err=True)
        sys.exit(1)


def prepare_onnx(registry: Registry, file: Path | None, version: Version) -> None:
    """An ONNX artifact needs no conversion: check, optimise and sign it now (what `convert`
    does), so that serve, profile and build take it as it is. Nothing native is loaded."""
    from .resolve import load

    ws = load(file, against_lock=False) if file is not None else None  # the lock as pinned just now
    pinned = ws.lock.version(version.model, version.version) if ws else None
    if "onnx" in version.artifacts and (pinned is None or pinned.onnx is not None):
        return  # the same bytes again: already prepared
    convert_version(registry, ws, version, None, speed=False)


def print_report(version: Version, report: Report) -> None:
    click.echo(
        f"{version.model}@{version.version} ({version.framework}) -> ONNX opset {report.opset}, "
        f"optimisation {report.optimization}"
    )
    click.echo(f"parity on {report.parity.rows} sample rows: {'passed' if report.parity.passed else 'FAILED'}")
    click.echo(report.parity.describe())
    quant = report.quantization
    if quant.get("mode") not in (None, "none"):
        click.echo(
            f"quantisation {quant['mode']}: {'kept' if quant['kept'] else 'dropped'} ({quant.get('reason', '')})"
        )
    for key, row in sorted(report.speedup.items()):
        if isinstance(row, dict):
            click.echo(
                f"speed-up at {key.replace('batch', 'batch ')}: native {row['nativeMs']} ms, "
                f"ONNX {row['onnxMs']} ms, {row['speedup']}x"
            )
    if report.validation is not None:
        v = report.validation
        click.echo(
            f"validation: {v['metric']} = {v['value']:.4f} (threshold {v['threshold']}) "
            f"{'passed' if v['passed'] else 'FAILED'}"
        )
    sig = report.signature
    click.echo(
        "signature: "
        + ", ".join(f"{t['name']} {t['datatype']}{t['shape']}" for t in sig["inputs"])
        + " -> "
        + ", ".join(f"{t['name']} {t['datatype']}{t['shape']}" for t in sig["outputs"])
    )
    for change in report.breaking:
        click.secho(f"BREAKING CHANGE against the previous version: {change}", fg="yellow", err=True)


def print_problems(problems: tuple[Problem, ...] | list[Problem]) -> None:
    for problem in problems:
        click.secho(str(problem), fg="yellow" if problem.severity == "warning" else "red", err=True)


def open_workspace(file: Path) -> Workspace:
    """The project of `file`, its warnings printed."""
    from .resolve import load

    ws = load(file)
    print_problems(ws.warnings)
    return ws
