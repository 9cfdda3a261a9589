"""`mlops-iac score`: a whole dataset through one registered model version, in parts."""

from __future__ import annotations

import json
import time
from pathlib import Path

import click

from .console import registry_file_option as file_option
from .errors import MlopsIacError
from .registry import parse_ref
from .scoring import Job, Settings, Summary, default_workers, parts, prepare, score
from .scoring.writers import OUTPUT_FORMATS
from .serving.config import ModelConfig
from .spec.batch import Batch
from .workspace import cached_onnx, onnx_artifact, project_registry, root_of


@click.command(name="score")
@click.argument("ref", metavar="MODEL@N", required=False)
@file_option
@click.option(
    "--deployment",
    default=None,
    help="A kind: batch deployment of mlops.yaml: its pinned version, "
    "inputs, output and settings (the flags given here win).",
)
@click.option(
    "--input",
    "inputs",
    multiple=True,
    metavar="PATH",
    help="Parquet, CSV, .npy or JSON-lines files or globs (repeatable).",
)
@click.option(
    "--output",
    type=click.Path(file_okay=False, path_type=Path),
    default=None,
    help="Folder for the output parts, the rejects and manifest.json.",
)
@click.option(
    "--batch-size",
    type=click.IntRange(1),
    default=None,
    help="Rows per session.run (and per Parquet row group). [default: 10000]",
)
@click.option(
    "--part-rows",
    type=click.IntRange(1),
    default=None,
    help="Rows per output part (rounded up to whole batches). [default: 100000]",
)
@click.option(
    "--workers",
    type=click.IntRange(0, 256),
    default=0,
    help="Lanes scoring parts (threads with their own session; processes beside a Python handler); "
    "each runs onnxruntime on CPUs/N threads. "
    "[default: 0, one per 4 CPUs this process may use, at least 1]",
)
@click.option(
    "--threads",
    type=click.IntRange(1, 256),
    default=None,
    help="onnxruntime threads per worker (default: the CPUs this process may use / workers).",
)
@click.option(
    "--error-threshold",
    type=click.IntRange(-1),
    default=None,
    help="Rejected rows tolerated before the run fails; -1: any number. [default: 0]",
)
@click.option(
    "--id",
    "ids",
    multiple=True,
    metavar="COLUMN",
    help="Id columns copied to the output (default: columns named id or *_id).",
)
@click.option(
    "--format",
    "fmt",
    type=click.Choice(sorted(OUTPUT_FORMATS)),
    default=None,
    help="Format of the output parts. [default: parquet]",
)
@click.option("--resume", is_flag=True, help="Finish a run in --output: skip the parts already done.")
@click.option(
    "--shard",
    default="0/1",
    show_default=True,
    metavar="I/N",
    help="Score only parts I, I+N, ... (one pod of an indexed Job).",
)
@click.option(
    "--summary",
    "summary_file",
    type=click.Path(dir_okay=False, path_type=Path),
    default=None,
    help="Also write the summary here as Markdown (a CI job summary).",
)
@click.option("--json", "as_json", is_flag=True, help="Print the summary as JSON.")
def score_command(
    ref: str | None,
    file: Path,
    deployment: str | None,
    inputs: tuple[str, ...],
    output: Path | None,
    batch_size: int | None,
    part_rows: int | None,
    workers: int,
    threads: int | None,
    error_threshold: int | None,
    ids: tuple[str, ...],
    fmt: str | None,
    resume: bool,
    shard: str,
    summary_file: Path | None,
    as_json: bool,
) -> None:
    """Score whole datasets with a registered model version (its ONNX file, its handler).

    Output parts are written atomically and listed in OUTPUT/manifest.json; after a crash,
    rerun with --resume to score only what is missing. Rows that cannot be scored go to
    rejects-*.parquet with the reason; rows in = rows out + rejects.
    """
    index, count = _shard(shard)
    batch = None
    if deployment is not None:  # a local target's batch deployment: the command itself
        ref, batch, root = _deployment(file, deployment, ref)
        inputs = inputs or tuple(str(root / p) for p in batch.input)
        output = output or root / batch.output
    if ref is None or not inputs or output is None:
        raise click.UsageError("give MODEL@N, --input and --output, or --deployment NAME")
    model, base = _model(file, ref)
    settings = Settings(
        batch_size=_first(batch_size, batch.batch_size if batch else None, 10_000),
        part_rows=_first(part_rows, batch.part_rows if batch else None, 100_000),
        workers=workers or default_workers(threads),
        threads=threads,
        error_threshold=_first(error_threshold, batch.error_threshold if batch else None, 0),
        ids=ids or None,
        format=fmt or (batch.format if batch else "parquet"),
        resume=resume,
        shard=index,
        shards=count,
    )
    job = prepare(model, base, list(inputs), output, settings)
    label = f"{model.name}@{model.version}"
    started = time.perf_counter()
    scored = [0]  # rows scored by this run, not those a resume found done: what a rate is of
    try:
        summary = _run_with_progress(job, label, as_json, scored)
    except MlopsIacError:
        _write_summary(summary_file, job.out / "manifest.json", label)
        raise
    _report(summary, label, scored[0], time.perf_counter() - started, summary_file, as_json)


def _first(given: int | None, spec: int | None, default: int) -> int:
    return given if given is not None else spec if spec is not None else default


def _deployment(file: Path, name: str, ref: str | None) -> tuple[str, Batch, Path]:
    """The pinned version and batch settings of a kind: batch deployment."""
    _, ws = project_registry(file)
    if ws is None:
        raise MlopsIacError(f"{file} not found; --deployment needs mlops.yaml")
    batch = {d.name: d for d in ws.resolved.deployments if d.batch is not None}
    dep = batch.get(name)
    if dep is None or dep.batch is None:
        raise MlopsIacError(f"no batch deployment {name!r}; batch deployments: {', '.join(batch) or 'none'}")
    number = dep.versions[0].number
    if ref is not None or number is None:
        raise MlopsIacError(
            f"{name} scores with {dep.model}@{dep.versions[0].ref} as mlops.lock pins it; "
            "give either MODEL@N or --deployment"
            if ref
            else f"{name}: its version is not pinned in mlops.lock; run `mlops-iac lock sync`"
        )
    return f"{dep.model}@{number}", dep.batch, ws.root


def _shard(text: str) -> tuple[int, int]:
    index, sep, count = text.partition("/")
    if not (sep and index.isdigit() and count.isdigit()) or not 0 <= int(index) < int(count):
        raise click.BadParameter(f"{text!r}: expected I/N with 0 <= I < N", param_hint="--shard")
    return int(index), int(count)


def _model(file: Path, ref: str) -> tuple[ModelConfig, Path]:
    """The version's ONNX file, fetched from the registry and verified as `serve` does."""
    registry, ws = project_registry(file)
    root = root_of(ws)
    version = registry.resolve(parse_ref(ref))
    onnx = onnx_artifact(version)
    path = cached_onnx(registry, root, version.model, version.version, onnx.digest)
    handler = None
    if ws is not None and any(m.name == version.model for m in ws.resolved.models):
        handler = ws.resolved.model(version.model).handler
    return ModelConfig(
        name=version.model, version=version.version, path=path, digest=onnx.digest, handler=handler
    ), root


class _Lines:
    """Progress as whole lines, for a log or a pipe: a terminal's redrawn bar would be cut and
    wrapped there. A line each tenth of the rows, and the last."""

    def __init__(self, label: str, total: int, scored: list[int]) -> None:
        self.label, self.total, self.scored, self.shown = label, total, scored, 0

    def __call__(self, rows: int) -> None:
        self.scored[0] += rows
        done = self.scored[0]
        if done >= self.total or done - self.shown >= max(1, self.total // 10):
            self.shown = done
            click.echo(f"scoring {self.label}: {done:,}/{self.total:,} rows ({done / max(self.total, 1):.0%})")


def _run_with_progress(job: Job, label: str, quiet: bool, scored: list[int]) -> Summary:
    from rich.console import Console
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        ProgressColumn,
        Task,
        TaskProgressColumn,
        TextColumn,
        TimeElapsedColumn,
        TimeRemainingColumn,
    )
    from rich.text import Text

    class RowsPerSecond(ProgressColumn):
        def render(self, task: Task) -> Text:
            return Text(f"{task.speed or 0:>9,.0f} rows/s")

    total = sum(p.stop - p.start for p in parts(job) if p.index % job.settings.shards == job.settings.shard)
    if not quiet and not Console().is_terminal:
        return score(job, _Lines(label, total, scored))
    columns = (
        TextColumn(f"scoring {label}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("rows"),
        TaskProgressColumn(),
        RowsPerSecond(),
        TimeElapsedColumn(),
        TextColumn("ETA"),
        TimeRemainingColumn(),
    )
    with Progress(*columns, disable=quiet, transient=False) as progress:
        task = progress.add_task("score", total=total)

        def advance(rows: int) -> None:
            scored[0] += rows
            progress.advance(task, rows)

        return score(job, advance)


def _report(
    summary: Summary, label: str, scored: int, seconds: float, summary_file: Path | None, as_json: bool
) -> None:
    data = {
        "rows_in": summary.rows_in,
        "rows_out": summary.rows_out,
        "rejects": summary.rejects,
        "parts": summary.parts,
        "resumed_parts": summary.skipped,
        "manifest": str(summary.manifest),
    }
    if summary_file is not None:
        summary_file.write_text(summary.markdown(label))
    if as_json:
        click.echo(json.dumps(data, indent=2))
        return
    # A rate of rows this run scored only: a resume that found every part done scored none.
    rate = f", {scored / seconds:,.0f} rows/s" if scored and seconds > 0 else ""
    click.echo(
        f"scored {summary.rows_in} rows with {label}: {summary.rows_out} out, {summary.rejects} "
        f"rejected, {summary.parts} part(s) ({summary.skipped} already done){rate}; "
        f"manifest {summary.manifest}"
    )


def _write_summary(summary_file: Path | None, manifest: Path, label: str) -> None:
    """On failure, the summary (from the manifest) still reaches the CI job summary."""
    if summary_file is None or not manifest.exists():
        return
    doc = json.loads(manifest.read_text())["summary"]
    summary_file.write_text(
        Summary(
            doc["rows_in"],
            doc["rows_out"],
            doc["rejects"],
            doc["parts"],
            0,
            manifest,
            doc.get("error") or doc["status"],
        ).markdown(label)
    )
