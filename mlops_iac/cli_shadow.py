"""`mlops-iac shadow report DEPLOYMENT --collected PATH`: a shadow version's recorded answers
against the primary's, paired by request id, as Markdown and a PNG."""

from __future__ import annotations

from pathlib import Path

import click

from .console import file_option
from .errors import MlopsIacError
from .monitoring.shadow import markdown, pair, plot, read_records
from .resolve import load


@click.group()
def shadow() -> None:
    """Shadow traffic: what a mirrored version would have answered."""


@shadow.command("report")
@click.argument("deployment")
@file_option
@click.option(
    "--collected",
    "paths",
    multiple=True,
    required=True,
    type=click.Path(path_type=Path),
    help="Collected records (a JSON-lines file or a folder of them; repeatable).",
)
@click.option(
    "--out",
    type=click.Path(file_okay=False, path_type=Path),
    default=Path("shadow-report"),
    show_default=True,
    help="Where report.md and shadow.png are written.",
)
def report(deployment: str, file: Path, paths: tuple[Path, ...], out: Path) -> None:
    """Pair the mirrored requests' records by request id: label agreement, numeric differences per
    output, latency of each version."""
    ws = load(file)
    known = {d.name: d for d in ws.resolved.deployments}
    if deployment not in known:
        raise MlopsIacError(f"unknown deployment {deployment!r}; deployments: {', '.join(known) or 'none'}")
    dep = known[deployment]
    if not dep.shadow:
        raise MlopsIacError(
            f"{deployment} mirrors to no shadow version; add `shadow: {{VERSION: PERCENT}}` to it in {ws.file}"
        )
    records = read_records(paths)
    texts = []
    for version in sorted(dep.shadow):
        result = pair(records, dep.model, str(version))
        if result.pairs == 0:
            raise MlopsIacError(
                f"no mirrored request of {dep.model} to v{version} in "
                f"{', '.join(map(str, paths))}: is data collection on (monitoring.collect) "
                "and its sink a file?"
            )
        png = out / f"shadow-v{version}.png"
        plot(result, png)
        texts.append(markdown(deployment, result, png.name))
    out.mkdir(parents=True, exist_ok=True)
    (out / "report.md").write_text("\n".join(texts), encoding="utf-8")
    click.echo("\n".join(texts), nl=False)
