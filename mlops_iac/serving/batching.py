"""Dynamic batching: requests that arrive close together are merged into one run.

Up to `max_batch_size` rows are concatenated along the batch dimension, run once in a
worker thread (onnxruntime releases the GIL, so the event loop keeps taking requests), and
the outputs are split back by rows. One batch runs at a time per model version; requests
that arrive while it runs wait for it and form the next batch.

When no batch is running, a request waits up to `max_delay` for company. With a delay of 0
it goes at once ("continuous batching"): no added latency at low load, and batches form by
themselves under load, which is why the profiler recommends 0 for small models.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np

Feeds = dict[str, np.ndarray]
Outputs = dict[str, np.ndarray]


@dataclass
class _Item:
    feeds: Feeds
    rows: int
    future: asyncio.Future[tuple[Outputs, float, int]]
    queued: float


class Batcher:
    def __init__(self, run: Callable[[Feeds], Outputs], max_batch_size: int, max_delay_s: float) -> None:
        self.run = run
        self.max_rows = max_batch_size
        self.max_delay = max_delay_s
        self.pending: list[_Item] = []
        self.pending_rows = 0
        self.timer: asyncio.TimerHandle | None = None
        self.busy = False
        self.executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="batch")

    async def submit(self, feeds: Feeds) -> tuple[Outputs, float, int]:
        """(outputs for these rows, seconds spent queued, rows in the batch that ran them)."""
        loop = asyncio.get_running_loop()
        rows = int(next(iter(feeds.values())).shape[0])
        item = _Item(feeds, rows, loop.create_future(), time.perf_counter())
        self.pending.append(item)
        self.pending_rows += rows
        if self.pending_rows >= self.max_rows or (not self.busy and self.max_delay <= 0):
            self._flush()
        elif self.timer is None and not self.busy:  # while busy, the batch's end flushes
            self.timer = loop.call_later(self.max_delay, self._flush)
        return await item.future

    def _take(self) -> list[_Item]:
        taken: list[_Item] = []
        rows = 0
        while self.pending and (not taken or rows + self.pending[0].rows <= self.max_rows):
            item = self.pending.pop(0)
            taken.append(item)
            rows += item.rows
        self.pending_rows -= rows
        return taken

    def _flush(self) -> None:
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None
        if self.busy or not self.pending:
            return  # the batch in flight will flush again when it is done
        items = self._take()
        self.busy = True
        loop = asyncio.get_running_loop()
        started = time.perf_counter()
        task = loop.run_in_executor(self.executor, self._run_batch, items)
        task.add_done_callback(lambda done: self._finish(items, started, done))

    def _run_batch(self, items: list[_Item]) -> Outputs:
        if len(items) == 1:
            return self.run(items[0].feeds)
        names = items[0].feeds.keys()
        merged = {n: np.concatenate([i.feeds[n] for i in items], axis=0) for n in names}
        return self.run(merged)

    def _finish(self, items: list[_Item], started: float, done: asyncio.Future[Outputs]) -> None:
        self.busy = False
        rows = sum(i.rows for i in items)
        error = done.exception()
        at = 0
        for item in items:
            if not item.future.done():  # a client that went away cancelled its future
                if error is not None:
                    item.future.set_exception(error)
                else:
                    outputs = {n: v[at: at + item.rows] for n, v in done.result().items()}
                    item.future.set_result((outputs, started - item.queued, rows))
            at += item.rows
        if self.pending:  # they waited for this batch: at least as long as a delay is meant for
            self._flush()

    def close(self) -> None:
        self.executor.shutdown(wait=True)
