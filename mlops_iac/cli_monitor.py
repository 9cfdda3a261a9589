"""`mlops-iac monitor drift`: the collected data against the version's baseline."""

from __future__ import annotations

import json
import math
import sys
import tempfile
from pathlib import Path

import click

from .cli_registry import file_option, project_registry
from .errors import MlopsIacError
from .fsutil import atomic_write
from .monitoring.drift import DriftResult, check
from .registry import parse_ref

DRIFT_EXIT = 3  # 1 is an error, 2 a usage error: a workflow can tell drift apart


@click.group()
def monitor() -> None:
    """Watch deployed versions: drift of the collected data against the baseline."""


@monitor.command("drift")
@click.argument("ref")
@click.option("--collected", "paths", multiple=True, required=True,
              type=click.Path(exists=True, dir_okay=False, path_type=Path),
              help="A file of collected JSON lines (repeatable; rotated files too).")
@click.option("--threshold", type=float, default=None,
              help="PSI above which a column has drifted (default: monitoring.drift.threshold, else 0.2).")
@click.option("--report", "report_dir", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="Write report.md and psi.png here.")
@click.option("--json", "as_json", is_flag=True)
@file_option
def drift(ref: str, paths: tuple[Path, ...], threshold: float | None, report_dir: Path | None, as_json: bool,
          file: Path) -> None:
    """Population stability index and Kolmogorov-Smirnov statistic per input and output column.

    Streams the records (a million need no more memory than ten). Exits 3 when a column's PSI
    is over the threshold, so a scheduled workflow can open an issue.
    """
    registry, ws = project_registry(file, against_lock=False)
    version = registry.resolve(parse_ref(ref))
    if "baseline" not in version.artifacts:
        raise MlopsIacError(f"{version.model}@{version.version} has no baseline; `mlops-iac convert` makes it")
    if threshold is None:
        deployed = [d.monitoring.drift_threshold for d in (ws.resolved.deployments if ws else ())
                    if d.model == version.model]
        threshold = deployed[0] if deployed else 0.2
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "baseline.json"
        registry.pull(parse_ref(f"{version.model}@{version.version}"), path, "baseline")
        base = json.loads(path.read_text())
    results, records = check(base, paths, threshold)
    if records == 0:  # a table of nan would look like an answer
        raise MlopsIacError(f"no readable records in {', '.join(map(str, paths))}; expected the JSON lines "
                            "that the server's data collection writes")
    drifted = [r for r in results if r.drifted]
    if as_json:
        click.echo(json.dumps({"records": records, "threshold": threshold, "columns": [r.__dict__ for r in results]},
                              indent=2, sort_keys=True, default=str))
    else:
        _table(results, records, threshold)
    if report_dir is not None:
        write_report(report_dir, f"{version.model}@{version.version}", base, results, records, threshold)
    if drifted:
        click.secho(f"drift: {len(drifted)} column(s) over PSI {threshold:g}: "
                    + ", ".join(r.name for r in drifted), fg="red", err=True)
        sys.exit(DRIFT_EXIT)


def _table(results: list[DriftResult], records: int, threshold: float) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table("column", "PSI", "KS", "KS p-value", "values", "drift", title=f"{records:,} records, "
                  f"PSI threshold {threshold:g}")
    for r in sorted(results, key=lambda r: -1 if math.isnan(r.psi) else -r.psi):
        table.add_row(r.name, f"{r.psi:.4f}", f"{r.ks:.4f}", f"{r.ks_pvalue:.2g}", f"{r.count:,}",
                      "DRIFT" if r.drifted else "")
    Console(width=120).print(table)


def write_report(folder: Path, title: str, base: dict[str, object], results: list[DriftResult], records: int,
                 threshold: float) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    folder.mkdir(parents=True, exist_ok=True)
    ordered = sorted(results, key=lambda r: -1 if math.isnan(r.psi) else -r.psi)
    fig, ax = plt.subplots(figsize=(8, max(3.0, 0.3 * len(ordered))), dpi=110)
    ax.barh([r.name for r in ordered][::-1], [0 if math.isnan(r.psi) else r.psi for r in ordered][::-1],
            color=["#d62728" if r.drifted else "#1f77b4" for r in ordered][::-1])
    ax.axvline(threshold, color="black", linestyle="--", label=f"threshold {threshold:g}")
    ax.set_xlabel("population stability index")
    ax.set_title(f"{title}: drift per column ({records:,} records)")
    ax.legend()
    fig.tight_layout()
    fig.savefig(folder / "psi.png", metadata={"Software": None})
    plt.close(fig)
    lines = [f"### Drift of {title}", "", f"{records:,} collected records against the baseline of "
             f"{base.get('rows')} rows; PSI threshold {threshold:g}.", "",
             "| column | PSI | KS | KS p-value | values | drift |", "|---|---|---|---|---|---|"]
    lines += [f"| {r.name} | {r.psi:.4f} | {r.ks:.4f} | {r.ks_pvalue:.2g} | {r.count:,} | "
              f"{'**drift**' if r.drifted else ''} |" for r in ordered[:200]]
    lines += ["", "![PSI per column](psi.png)"]
    atomic_write(folder / "report.md", ("\n".join(lines) + "\n").encode())
