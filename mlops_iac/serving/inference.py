"""One request's way through a served version: inputs checked, the model run inline, the
outputs post-processed, counted and collected. The server's routes (REST, the protocol's
direct answer, gRPC) and its batcher path share these steps; `app.py` keeps the routing."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, NamedTuple

import numpy as np

from .batching import Batcher
from .collect import Collector
from .handler import call_handler
from .protocol import Request
from .responses import Scope
from .runtime import ModelRuntime
from .triton import classify


@dataclass
class Entry:
    """A served model version with its batcher and its pre-bound metric children."""

    runtime: ModelRuntime
    batcher: Batcher | None
    weight: int
    ok: Any
    latency: Any
    inference: Any
    queue: Any
    batch: Any
    rows: int = 0  # rows answered (Triton's inference_count)
    runs: int = 0  # runs outside the batcher (with the batcher's runs: execution_count)
    last: float = 0.0  # when the last answer went out (epoch seconds)
    # The quickest one-row run outside the batcher, in seconds (0: none yet): the most that
    # merging a request into another's run can save. The quickest, not an average: a first,
    # cold run takes ten times longer. One row only: an empty request runs in microseconds on
    # any model, and a larger one's rows cost the same merged or not.
    lone_run: float = 0.0


class Answer(NamedTuple):
    """A whole answer made without the ASGI path (`Server.infer_now`), and what follows it.
    A named tuple: made once per request, where a frozen dataclass's __init__ costs more."""

    status: int
    body: bytes
    content_type: bytes
    headers: list[tuple[bytes, bytes]]
    after: Callable[[], None] = lambda: None


def inference_headers(scope: Scope) -> tuple[str | None, str | None, bytes | None]:
    """Inference-Header-Content-Length, Content-Encoding (lower case) and Content-Length."""
    header_length, encoding, declared = None, None, None
    for key, value in scope["headers"]:
        if key == b"inference-header-content-length":
            header_length = value.decode("latin-1")
        elif key == b"content-encoding":
            encoding = value.decode("latin-1").lower()
        elif key == b"content-length":
            declared = value
    return header_length, encoding, declared


def feeds_of(entry: Entry, request: Request) -> tuple[dict[str, np.ndarray], list[str] | None, int]:
    """The checked feeds (after the handler's preprocess), the outputs asked for, the rows."""
    runtime = entry.runtime
    if runtime.preprocess is not None:
        feeds = runtime.check(call_handler(runtime.preprocess, request), None)
    else:
        feeds = runtime.check(request.inputs, request.datatypes)
    names = runtime.check_outputs(request.outputs) if runtime.postprocess is None else None
    first = next(iter(feeds.values())) if feeds else None
    return feeds, names, int(first.shape[0]) if first is not None and first.ndim else 1


def run_inline(
    entry: Entry,
    request: Request,
    feeds: dict[str, np.ndarray],
    names: list[str] | None,
    rows: int,
    started: float,
    collector: Collector,
) -> dict[str, np.ndarray]:
    """The model run here and now, on the caller's thread (no batcher)."""
    before = time.perf_counter()
    outputs = entry.runtime.run(feeds, names)
    seconds = time.perf_counter() - before
    entry.runs += 1
    if rows == 1:
        entry.lone_run = min(entry.lone_run, seconds) if entry.lone_run else seconds
    return finish(entry, request, feeds, outputs, rows, seconds, started, collector)


def runs_inline(entry: Entry, rows: int = 1) -> bool:
    """Whether a request of `rows` runs here and now rather than through the model's batcher:
    no batcher, too many rows for one, nobody to merge with, or a model too quick to gain."""
    batcher = entry.batcher
    if batcher is None or not 0 < rows <= batcher.max_rows:
        return True
    return batcher.quiet() or batcher.not_worth_it(entry.lone_run)


def finish(
    entry: Entry,
    request: Request,
    feeds: dict[str, np.ndarray],
    outputs: dict[str, np.ndarray],
    rows: int,
    inference: float,
    started: float,
    collector: Collector,
) -> dict[str, np.ndarray]:
    """Post-processing and classification, then the run timed and offered to collection. The
    request is counted by the caller (`Server.counted`), once its answer is encoded."""
    runtime = entry.runtime
    if runtime.postprocess is not None:
        outputs = call_handler(runtime.postprocess, outputs)
        if request.outputs is not None:
            outputs = {n: outputs[n] for n in request.outputs if n in outputs}
    if request.classification:
        outputs = classify(runtime, outputs, request.classification)
    entry.inference.observe(inference)
    entry.latency.observe(time.perf_counter() - started)
    entry.rows += rows
    entry.last = time.time()
    if collector.sampled():
        record = {
            "time": time.time(),
            "model": runtime.name,
            "version": runtime.version,
            "id": request.id,
            "inputs": feeds,
            "outputs": outputs,
            "latencyMs": round((time.perf_counter() - started) * 1000, 3),
        }
        if request.held:  # a mirror writes the primary's record itself: one record per request
            request.record = record
        else:
            collector.offer(record)
    return outputs
