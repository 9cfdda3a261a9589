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
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, ThreadPoolExecutor, wait
from dataclasses import replace
from pathlib import Path
from typing import Any

from ..errors import MlopsIacError
from ..serving.config import ModelConfig
from ..serving.workers import cpu_limit
from .features import default_ids, plan_inputs
from .jobs import Job, Part, PartResult, Progress, ScoringError, Settings, Summary, summarize
from .manifest import finished, header, make_durable, manifest_path, write_manifest
from .part import runtime_of, score_part
from .sources import expand, open_source
from .writers import OUTPUT_FORMATS

# Measured on 16 cores (benchmarks/batch.py, a 100-tree RandomForest): 4 workers of 4
# onnxruntime threads scored 1.33x (10k-row batches) to 2.23x (100k) one worker of 16
# threads, and 8 workers of 2 no more than 4. Below 8 CPUs one worker keeps them busy.
CPUS_PER_WORKER = 4


def default_workers(threads: int | None = None) -> int:
    """The processes `score` uses unless told: one per 4 CPUs this process may use (one per
    `threads` CPUs when those are given, so workers x threads stays within the CPUs), at least 1."""
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
    failed = None
    try:
        for result in _execute(job, todo, progress):
            done[result.index] = result
            write_manifest(path, state, mine, None)  # the part counts as done from here on (never "complete")
            rejects = sum(r.rejects for r in done.values())
            if 0 <= job.settings.error_threshold < rejects:
                failed = f"{rejects} rejected rows exceed --error-threshold {job.settings.error_threshold}"
                break
    finally:
        if failed is None and all(p.index in done for p in mine):
            make_durable(job.out, done.values())
        write_manifest(path, state, mine, failed, final=True)  # "complete" only after make_durable
    summary = summarize(done, mine, len(mine) - len(todo), path, failed)
    if failed:
        raise ScoringError(f"{failed} (rejects in {job.out}/rejects-*; manifest {path})")
    return summary


def _clean_temporaries(out: Path) -> None:
    for stale in out.glob(".*.tmp"):  # a part being written when the last run died
        with contextlib.suppress(FileNotFoundError):
            stale.unlink()


def _execute(job: Job, todo: list[Part], progress: Progress | None) -> Iterator[PartResult]:
    if job.settings.workers == 1 or len(todo) <= 1:
        for part in todo:
            yield score_part(job, part, progress)
        return
    yield from _in_processes(job, todo, progress)


_QUEUE: Any = None


def _init_worker(rows: Any) -> None:
    global _QUEUE
    _QUEUE = rows


def _work(job: Job, part: Part) -> PartResult:
    return score_part(job, part, _QUEUE.put)


def _in_processes(job: Job, todo: list[Part], progress: Progress | None) -> Iterator[PartResult]:
    """Parts dealt to `workers - 1` processes and to this one, on a thread, with the session
    `prepare` loaded: it scores from the first second while the others start (seconds: Python,
    pyarrow, the model), so their start-up costs the run its CPU time, not a wait."""
    # spawn, not fork: onnxruntime's thread pools do not survive a fork.
    context = multiprocessing.get_context("spawn")
    rows = context.Queue()
    others = job.settings.workers - 1
    with (
        ProcessPoolExecutor(others, mp_context=context, initializer=_init_worker, initargs=(rows,)) as pool,
        ThreadPoolExecutor(1, thread_name_prefix="mlops-iac-part") as here,
    ):
        pending: set[Future[PartResult]] = set()
        mine: Future[PartResult] | None = None
        waiting = list(reversed(todo))
        # Ctrl-C reaches the main thread only, and a failed part ends the run: either way the
        # part on this process's thread stops at its next batch, not after its last.
        stop = threading.Event()
        try:
            while waiting or pending:
                if waiting and (mine is None or mine.done()):
                    mine = here.submit(score_part, job, waiting.pop(), progress, stop)
                    pending.add(mine)
                # One part per process at a time: a part queued ahead to a worker still starting
                # would wait there while this process could have scored it.
                while waiting and len(pending) < 1 + others:
                    pending.add(pool.submit(_work, job, waiting.pop()))
                finished, pending = wait(pending, timeout=0.2, return_when=FIRST_COMPLETED)
                _drain(rows, progress)
                for future in finished:
                    yield future.result()
        finally:
            stop.set()
            for future in pending:
                future.cancel()
        _drain(rows, progress)


def _drain(rows: Any, progress: Progress | None) -> None:
    while True:
        try:
            count = rows.get_nowait()
        except queue.Empty:
            return
        if progress is not None:
            progress(count)
