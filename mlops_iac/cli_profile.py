"""`mlops-iac profile`: measure a converted version and write the recommendation to the lock."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import click

from .console import registry_file_option as file_option
from .fsutil import atomic_write
from .lock import Lock, update_lock
from .profile import plan, recommend, run
from .profile.report import markdown, plots
from .registry import parse_ref
from .spec.models import Profile
from .workspace import features as sample_rows
from .workspace import model_spec, onnx_artifact, onnx_file, project_registry, root_of


@click.command()
@click.argument("ref")
@click.option(
    "--sample",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    help="Inputs to measure with; default: the model's `sample` in mlops.yaml.",
)
@click.option("--quick", is_flag=True, help="Fewer points, shorter runs: for pull requests.")
@click.option("--budget", type=float, default=None, metavar="SECONDS", help="Fit the measurements into this time.")
@click.option("--gpu", is_flag=True, help="Measure with onnxruntime's CUDA provider when it is available.")
@click.option(
    "--out",
    type=click.Path(file_okay=False, path_type=Path),
    default=None,
    help="Report folder (default: .mlops/profiles/MODEL-N beside mlops.yaml).",
)
@file_option
def profile(
    ref: str, sample: Path | None, quick: bool, budget: float | None, gpu: bool, out: Path | None, file: Path
) -> None:
    """Measure latency, throughput and memory of a converted version, in process and through the
    real server over HTTP, and recommend CPU, memory, threads, batching and replicas.

    The figures and the recommendation go to mlops.lock (where `hardware: auto` takes them),
    and a Markdown report with PNG plots to the report folder.
    """
    registry, ws = project_registry(file, against_lock=False)
    version = registry.resolve(parse_ref(ref))
    onnx_artifact(version)  # before anything is measured
    spec = model_spec(ws, version.model)
    settings = spec.profile if spec else Profile()
    measure = plan(settings.batch_sizes, settings.concurrency, quick=quick, budget_s=budget)
    root = root_of(ws)
    folder = out or root / ".mlops" / "profiles" / f"{version.model}-{version.version}"
    with onnx_file(registry, version) as model:
        # What is measured is the ONNX model, so its signature can make rows when there is no sample.
        features = sample_rows(sample, spec, ws, "onnx", model, click.echo)
        figures = _measure(model, features, measure, model.parent, gpu)
    rec, _ = recommend(
        figures, slo_ms=settings.p99_latency_ms, target_rps=settings.target_rps, max_batch=max(settings.batch_sizes)
    )
    title = f"{version.model}@{version.version}"
    written = plots(figures, folder, title)
    text = markdown(title, figures, rec, settings.p99_latency_ms, settings.target_rps, written)
    atomic_write(folder / "report.md", text.encode())
    pinned = ws is not None and ws.lock.version(version.model, version.version) is not None
    if ws is not None and pinned:

        def change(lock: Lock) -> Lock:
            return lock.with_facts(version.model, version.version, profile=figures, recommendation=rec.model_dump())

        update_lock(ws.lock_path, change)
    click.echo(
        f"{title}: cpu {rec.cpu_millis}m, memory {rec.memory_bytes // 2**20}Mi, threads {rec.threads}, "
        f"batching {'max ' + str(rec.max_batch_size) if rec.max_batch_size > 1 else 'off'}, "
        f"replicas {rec.replicas_min}-{rec.replicas_max}" + ("" if rec.slo_met else "  (p99 objective NOT met)")
    )
    click.echo(rec.note)
    click.echo(f"report: {folder / 'report.md'}" + ("; mlops.lock updated" if pinned else ""))


def _measure(model: Path, features: Any, measure: Any, workdir: Path, gpu: bool) -> dict[str, Any]:
    from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

    steps = len(measure.batch_sizes) * len(measure.threads) + 2 * len(measure.concurrency)
    with Progress(
        TextColumn("[bold]profile[/bold] {task.description}"), BarColumn(), TimeElapsedColumn(), transient=True
    ) as progress:
        task = progress.add_task("starting", total=steps)

        def advance(what: str) -> None:
            progress.update(task, advance=1, description=what)

        return run(model, features, measure, workdir, gpu=gpu, progress=advance)
