"""Dynamic batching: requests that arrive close together are merged into one run.

Up to `max_batch_size` rows are concatenated along the batch dimension, run once in a
worker thread (onnxruntime releases the GIL, so the event loop keeps taking requests), and
the outputs are split back by rows. One batch runs at a time per model version; requests
that arrive while it runs wait for it and form the next batch.

Isolation: a request joins a batch only after its inputs were checked to bring the same
rows each (`ModelRuntime.check`), and only beside requests whose tensors have the same
trailing shapes and types, so concatenation cannot mix rows across clients. When a merged
run fails, or its outputs do not have the batch's rows, every request of the batch runs
alone: a failing request fails only itself.

When no batch is running, a request waits up to `max_delay` for company. With a delay of 0
it waits only for the requests the event loop has already read (one turn of the loop), then
goes ("continuous batching"): no added latency at low load, and batches form by themselves
under load, which is why the profiler recommends 0 for small models.

A request that goes alone runs inline, on the event loop's thread: the hop to the worker
thread and back costs more than a small model's run (0.61x of unbatched at one connection
when every request hopped). Only a merged batch goes to the worker thread, where its cost is
shared by its rows and the loop keeps reading the next requests meanwhile.
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
    key: tuple[tuple[str, tuple[int, ...], str], ...]  # what must match to share a batch


def _key(feeds: Feeds) -> tuple[tuple[str, tuple[int, ...], str], ...]:
    return tuple((n, a.shape[1:], a.dtype.str) for n, a in feeds.items())


# On 16 cores the benchmark's forest (a lone run: 8-13 us) answered 0.59x as many requests at
# 8 connections through the batcher as inline; a 225 us MLP answered 1.8x-2.9x as many.
MERGING_PAYS_FROM_S = 50e-6


class Batcher:
    def __init__(
        self,
        run: Callable[[Feeds], Outputs],
        max_batch_size: int,
        max_delay_s: float,
        waiting: Callable[[], int] | None = None,
    ) -> None:
        self.run = run
        # How many requests were read and have not started yet (the server's HTTP protocol
        # counts them): none, and a request of a quiet moment has nobody to wait for.
        self.waiting = waiting
        self.max_rows = max_batch_size
        self.max_delay = max_delay_s
        self.pending: list[_Item] = []
        self.pending_rows = 0
        self.timer: asyncio.TimerHandle | None = None
        self.gathering = False  # a request of a quiet moment gives the others one turn to join
        self.busy = False
        self.executions = 0  # merged runs, for the statistics extension
        self.executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="batch")

    def not_worth_it(self, lone_run_s: float) -> bool:
        """Whether a model whose lone run takes `lone_run_s` (0: not measured yet) should run
        inline even while others wait: merging such runs saves less than the hop to the batch
        thread and back costs. Never with a delay (the settings ask to wait for company), nor
        without arrival counts (the tests' in-process servers, which always batch)."""
        return self.waiting is not None and self.max_delay <= 0 and 0 < lone_run_s < MERGING_PAYS_FROM_S

    def quiet(self) -> bool:
        """Nothing to batch with: nothing running, queued or read and not started. The server
        then runs the request directly, without even this class's bookkeeping (measured about
        15 us a request beside onnxruntime, which leaves the caches cold for it)."""
        return (
            self.waiting is not None
            and not self.busy
            and not self.pending
            and self.max_delay <= 0
            and not self.waiting()
        )

    async def submit(self, feeds: Feeds) -> tuple[Outputs, float, int]:
        """(outputs for these rows, seconds spent queued, rows in the batch that ran them)."""
        loop = asyncio.get_running_loop()
        rows = int(next(iter(feeds.values())).shape[0])
        item = _Item(feeds, rows, loop.create_future(), time.perf_counter(), _key(feeds))
        self.pending.append(item)
        self.pending_rows += rows
        if self.pending_rows >= self.max_rows:
            self._flush()
        elif self.busy or self.gathering or self.timer is not None:
            pass  # the batch in flight, the gathering request or the timer flushes this one
        elif self.max_delay > 0:
            self.timer = loop.call_later(self.max_delay, self._flush)
        elif self.waiting is not None and not self.waiting():
            self._flush()  # nobody else read: alone, inline, now
            if item.future.done():
                return item.future.result()
        else:
            # A delay of 0 still lets the requests already read join: their tasks, started in
            # this turn of the loop, reach submit() before this one resumes. Alone, it runs
            # inline in _flush and is answered here, without a wake-up through its future.
            self.gathering = True
            try:
                await asyncio.sleep(0)
            finally:  # cancelled too: the requests that joined must not wait for nobody
                self.gathering = False
                self._flush()
            if item.future.done():
                return item.future.result()
        return await item.future

    def _take(self) -> list[_Item]:
        """The oldest request and those after it that fit beside it, in arrival order."""
        first = self.pending[0]
        taken, kept, rows = [first], [], first.rows
        for item in self.pending[1:]:
            if item.key == first.key and rows + item.rows <= self.max_rows:
                taken.append(item)
                rows += item.rows
            else:
                kept.append(item)
        self.pending = kept
        self.pending_rows -= rows
        return taken

    def _flush(self) -> None:
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None
        if self.busy or not self.pending:
            return  # the batch in flight will flush again when it is done
        items = self._take()
        self.executions += 1
        started = time.perf_counter()
        if len(items) == 1 and not self.pending:  # alone: no thread hop (see the module's note)
            self._deliver(items, started, [self._alone(items[0])])
            return
        self.busy = True
        loop = asyncio.get_running_loop()
        task = loop.run_in_executor(self.executor, self._run_batch, items)
        task.add_done_callback(lambda done: self._finish(items, started, done))

    def _run_batch(self, items: list[_Item]) -> list[Outputs | Exception]:
        if len(items) == 1:
            return [self._alone(items[0])]
        total = sum(i.rows for i in items)
        try:
            merged = self.run({n: np.concatenate([i.feeds[n] for i in items], axis=0) for n in items[0].feeds})
        except Exception:  # one request's values can fail the whole batch
            return [self._alone(i) for i in items]
        if any(v.ndim == 0 or v.shape[0] != total for v in merged.values()):
            return [self._alone(i) for i in items]  # outputs not by row: they cannot be split
        results: list[Outputs | Exception] = []
        at = 0
        for item in items:
            results.append({n: v[at : at + item.rows] for n, v in merged.items()})
            at += item.rows
        return results

    def _alone(self, item: _Item) -> Outputs | Exception:
        try:
            return self.run(item.feeds)
        except Exception as exc:  # handed to that request's own future
            return exc

    def _finish(self, items: list[_Item], started: float, done: asyncio.Future[list[Outputs | Exception]]) -> None:
        self.busy = False
        error = done.exception()
        results: list[Outputs | BaseException] = [error] * len(items) if error is not None else list(done.result())
        self._deliver(items, started, results)
        if self.pending:  # they waited for this batch: at least as long as a delay is meant for
            self._flush()

    def _deliver(
        self, items: list[_Item], started: float, results: list[Outputs | BaseException] | list[Outputs | Exception]
    ) -> None:
        rows = sum(i.rows for i in items)
        for item, result in zip(items, results, strict=True):
            if item.future.done():  # a client that went away cancelled its future
                continue
            if isinstance(result, BaseException):
                item.future.set_exception(result)
            else:
                item.future.set_result((result, started - item.queued, rows))

    def close(self) -> None:
        self.executor.shutdown(wait=True)
