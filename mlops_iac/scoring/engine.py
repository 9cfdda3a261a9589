"""Batch scoring: inputs in fixed parts through one model version, each part written once.

Exactly once, without a coordinator: the parts are a pure function of the inputs and the
settings (every `part_rows` rows of each file); a part's output is written to a temporary
file and renamed into place; the manifest, rewritten atomically by the one process that
owns it after each part, lists the finished parts with their digests. A rerun with
`--resume` (after a crash, a SIGKILL, a preempted pod) trusts only parts that the manifest
lists and whose bytes still match, and recomputes the rest, which gives the same bytes:
row groups follow the batches, and nothing in a file depends on time or on the worker. A
tree ensemble's sums do depend on onnxruntime's thread count, so the count is part of what
identifies a run (`manifest.header`): a `--resume` with another one is refused.
"""

from __future__ import annotations

import contextlib
import multiprocessing
import queue
import threading
from collections.abc import Iterator
from concurrent.futures import Future, ProcessPoolExecutor, ThreadPoolExecutor
from dataclasses import replace
from pathlib import Path
from typing import Any

from ..errors import MlopsIacError, one_line
from ..serving.config import ModelConfig
from ..serving.workers import cpu_limit
from .features import default_ids, plan_inputs
from .jobs import Job, Part, PartResult, Progress, ScoringError, Settings, Summary, summarize
from .manifest import ManifestError, finished, header, make_durable, manifest_path, write_manifest
from .part import Emit, runtime_of, score_lane
from .sources import expand, open_source
from .writers import OUTPUT_FORMATS

# Measured with benchmarks/batch.py (a 100-tree RandomForest). On 16 cores, with lanes in
# processes then: 4 lanes of 4 onnxruntime threads scored 1.33x (10k-row batches) to 2.23x
# (100k) one lane of 16 threads, and 8 lanes of 2 no more than 4. On 2 cores, lanes in
# threads: 2 lanes of 1 thread scored 0.96-1.12x (10k, three runs) one lane of 2, each
# lane's run covering the other's reading and writing: too little for a second copy of the
# model in memory by default (each lane holds a session).
CPUS_PER_WORKER = 4


def default_workers(threads: int | None = None) -> int:
    """The lanes `score` uses unless told: one per 4 CPUs this process may use (one per `threads`
    CPUs when those are given, so lanes x threads stays within the CPUs), at least 1."""
    return max(1, cpu_limit() // (threads or CPUS_PER_WORKER))


def prepare(model: ModelConfig, base: Path, inputs: list[str], out: Path, settings: Settings) -> Job:
    """Check everything before any work: the settings, every input's schema against the model."""
    _check_settings(settings)
    part_rows = -(-max(settings.part_rows, settings.batch_size) // settings.batch_size) * settings.batch_size
    settings = replace(settings, part_rows=part_rows)
    # workers x threads = the CPUs this process may use (a pod's CPU limit, not the node's
    # cores): more onnxruntime threads than cores only make them wait for each other.
    threads = settings.threads or max(1, cpu_limit() // settings.workers)
    model = model.model_copy(update={"threads": threads})
    # Verifies the digest and loads the handler: fail early. Kept: one process loads the model once.
    runtime = runtime_of(model, base)
    handler = runtime.preprocess is not None
    sources = tuple(open_source(p) for p in expand(inputs))
    maps, ids = [], []
    for source in sources:
        chosen = list(settings.ids) if settings.ids is not None else default_ids(source.schema.names)
        maps.append(tuple(plan_inputs(source.path, source.schema, runtime.inputs, chosen, handler)))
        ids.append(tuple(chosen))
    return Job(model, base, sources, tuple(maps), tuple(ids), out, settings)


def _check_settings(s: Settings) -> None:
    if s.format not in OUTPUT_FORMATS:
        raise MlopsIacError(f"--format {s.format}: expected one of {', '.join(OUTPUT_FORMATS)}")
    if s.batch_size < 1 or s.workers < 1 or s.part_rows < 1 or s.error_threshold < -1:
        raise MlopsIacError(
            "--batch-size, --workers and --part-rows must be at least 1, --error-threshold at least -1 (-1: no limit)"
        )
    if not 0 <= s.shard < s.shards:
        raise MlopsIacError(f"shard {s.shard} of {s.shards}: expected 0 <= shard < shards")


def parts(job: Job) -> list[Part]:
    """Every part of the run, in order; a pure function of the inputs' row counts and settings."""
    out, index = [], 0
    for i, source in enumerate(job.sources):
        for start in range(0, max(source.rows, 1), job.settings.part_rows):
            out.append(Part(index, i, start, min(start + job.settings.part_rows, source.rows)))
            index += 1
    return out


def score(job: Job, progress: Progress | None = None) -> Summary:
    """Score every part of this shard not already done; the manifest records each one."""
    job.out.mkdir(parents=True, exist_ok=True)
    _clean_temporaries(job.out)
    head, path = header(job), manifest_path(job)
    done = finished(job, head, path)
    mine = [p for p in parts(job) if p.index % job.settings.shards == job.settings.shard]
    todo = [p for p in mine if p.index not in done]
    state = {"header": head, "done": done}
    write_manifest(path, state, mine, None)
    failed, raised = None, False
    try:
        failed = _score_parts(job, todo, progress, path, state, mine)
    except Exception as exc:  # the manifest records why the run stopped, as the CLI prints it
        failed, raised = _why(exc), True
        raise
    finally:
        if failed is None and all(p.index in done for p in mine):
            make_durable(job.out, done.values())
        # "complete" only after make_durable. A manifest that cannot record a failure (the disk
        # that failed the part is still full) keeps its last state, which is still true; the
        # error raised says what failed.
        with contextlib.suppress(ManifestError) if raised else contextlib.nullcontext():
            write_manifest(path, state, mine, failed, final=True)
    summary = summarize(done, mine, len(mine) - len(todo), path, failed)
    if failed:
        raise ScoringError(f"{failed} (rejects in {job.out}/rejects-*; manifest {path})")
    return summary


def _score_parts(
    job: Job, todo: list[Part], progress: Progress | None, path: Path, state: dict[str, Any], mine: list[Part]
) -> str | None:
    """Score `todo`, each finished part recorded as it comes; why the run stopped early, if it did."""
    done: dict[int, PartResult] = state["done"]
    for result in _execute(job, todo, progress):
        done[result.index] = result
        write_manifest(path, state, mine, None)  # the part counts as done from here on (never "complete")
        rejects = sum(r.rejects for r in done.values())
        if 0 <= job.settings.error_threshold < rejects:
            return f"{rejects} rejected rows exceed --error-threshold {job.settings.error_threshold}"
    return None


def _why(exc: Exception) -> str:
    return str(exc) if isinstance(exc, MlopsIacError) else f"{type(exc).__name__}: {one_line(exc)}"


def _clean_temporaries(out: Path) -> None:
    for stale in out.glob(".*.tmp"):  # a part being written when the last run died
        with contextlib.suppress(FileNotFoundError):
            stale.unlink()


def _execute(job: Job, todo: list[Part], progress: Progress | None) -> Iterator[PartResult]:
    """The results of `todo`'s parts as they finish, from `workers` lanes that each claim the
    next part when ready for one.

    The lanes are threads of this process, each with its own session: onnxruntime, Arrow's
    reading and writing and NumPy's copies run without the GIL, which the rest of a batch
    holds for about a millisecond. Threads start at once, where a process takes a second
    (Python, pyarrow, onnxruntime, the model) that a run of minutes still feels on many
    cores. A handler is Python, which holds the GIL: with one, the other lanes are processes."""
    lanes = min(job.settings.workers, len(todo))
    channels: tuple[Any, Any, Any]
    if lanes <= 1 or job.model.handler is None:
        channels = (queue.Queue(), queue.Queue(), threading.Event())
        yield from _run_lanes(job, todo, channels, max(lanes, 1), None, progress)
        return
    # spawn, not fork: onnxruntime's thread pools do not survive a fork.
    context = multiprocessing.get_context("spawn")
    channels = (context.Queue(), context.Queue(), context.Event())
    with ProcessPoolExecutor(lanes - 1, mp_context=context, initializer=_init_worker, initargs=channels) as pool:
        yield from _run_lanes(job, todo, channels, 1, (pool, lanes - 1), progress)


def _run_lanes(
    job: Job,
    todo: list[Part],
    channels: tuple[Any, Any, Any],
    here: int,
    processes: tuple[ProcessPoolExecutor, int] | None,
    progress: Progress | None,
) -> Iterator[PartResult]:
    """`here` lanes on threads of this process, the first with the session `prepare` loaded, and
    any in processes: this process scores from the first second while they start, so their
    start-up costs the run its CPU time, not a wait. The parts are queued in order, then one
    end mark per lane."""
    claims, events, stop = channels
    pool, others = processes if processes is not None else (None, 0)
    for part in todo:
        claims.put(part)
    for _ in range(here + others):
        claims.put(None)
    with ThreadPoolExecutor(here, thread_name_prefix="mlops-iac-lane") as threads:
        lanes = [threads.submit(score_lane, job, claims.get, _emitter(events), stop, i) for i in range(here)]
        lanes += [pool.submit(_lane, job) for _ in range(others)] if pool is not None else []
        # Ctrl-C reaches the main thread only, and a failed part ends the run: either way every
        # lane stops at its next batch instead of scoring its part to the end.
        try:
            yield from _collect(events, lanes, len(todo), progress)
        finally:
            stop.set()


def _collect(events: Any, lanes: list[Future[None]], expected: int, progress: Progress | None) -> Iterator[PartResult]:
    received = 0
    while received < expected:
        _raise_failed(lanes)  # a failed lane's error ends the run, while the others still score
        try:
            kind, value = events.get(timeout=0.2)
        except queue.Empty:
            _raise_failed(lanes)  # one that failed during the wait: its error, not a late event's
            if all(lane.done() for lane in lanes):
                kind, value = _late(events, expected - received)
            else:
                continue
        if kind == "rows":
            if progress is not None:
                progress(value)
        else:
            received += 1
            yield value


def _raise_failed(lanes: list[Future[None]]) -> None:
    for lane in lanes:
        if lane.done():
            lane.result()


def _late(events: Any, missing: int) -> tuple[str, Any]:
    """Every lane ended well, so its events are in the queue's pipe: wait for them, but not forever."""
    try:
        return events.get(timeout=30)  # type: ignore[no-any-return]
    except queue.Empty:
        raise MlopsIacError(f"the scoring lanes ended but {missing} parts were never reported") from None


def _emitter(events: Any) -> Emit:
    def emit(kind: str, value: Any) -> None:
        events.put((kind, value))

    return emit


_LANE: tuple[Any, Any, Any] | None = None  # a worker process's claims, events and stop


def _init_worker(claims: Any, events: Any, stop: Any) -> None:
    global _LANE
    _LANE = (claims, events, stop)


def _lane(job: Job) -> None:
    assert _LANE is not None
    claims, events, stop = _LANE
    score_lane(job, claims.get, _emitter(events), stop)
