"""One batch through the model by the server's own path: the handler's `preprocess`, the
input check, `session.run`, `postprocess`. Rows the handler refuses become rejects."""

from __future__ import annotations

from typing import Any

import numpy as np

from ..serving.handler import call_handler
from ..serving.protocol import ClientError, Request
from ..serving.runtime import ModelRuntime


def run_model(
    runtime: ModelRuntime, feeds: dict[str, np.ndarray], reasons: dict[int, str], rows: int
) -> tuple[dict[str, np.ndarray], np.ndarray]:
    """The outputs of the rows not in `reasons` (which may gain rows), and those rows' indices."""
    keep = _kept(rows, reasons)
    if len(keep) != rows:
        feeds = {k: v[keep] for k, v in feeds.items()}
    if not len(keep):
        return {}, keep
    if runtime.preprocess is None:
        return _forward(runtime, feeds), keep
    try:
        return _forward(runtime, feeds), keep
    except ClientError:
        pass
    # The handler refused the batch: find the rows it refuses, one by one, and score the rest.
    for position, row in enumerate(keep):
        try:
            _forward(runtime, {k: v[position : position + 1] for k, v in feeds.items()})
        except ClientError as exc:
            reasons[int(row)] = exc.message
    good = np.flatnonzero(np.isin(keep, _kept(rows, reasons)))
    if not len(good):
        return {}, keep[good]
    return _forward(runtime, {k: v[good] for k, v in feeds.items()}), keep[good]


def _kept(rows: int, reasons: dict[int, str]) -> np.ndarray:
    if not reasons:
        return np.arange(rows)
    return np.setdiff1d(np.arange(rows), np.fromiter(reasons, dtype=np.int64, count=len(reasons)))


def _forward(runtime: ModelRuntime, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    if runtime.preprocess is not None:
        feeds = call_handler(runtime.preprocess, Request(None, feeds, {}, None))
    runtime.check(feeds, None)
    outputs: dict[str, Any] = runtime.run(feeds)
    if runtime.postprocess is not None:
        outputs = call_handler(runtime.postprocess, outputs)
    return outputs
