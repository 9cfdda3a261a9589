"""Shadow traffic on local targets: a share of a model's requests mirrored to a version that
answers none of them, after the primary's answer has gone out.

The request path only adds the shadow's percent to a running total per shadow version and,
each time it passes 100, puts the parsed request and the primary's answer on a bounded
queue; a worker thread runs the shadow model and hands both records (the primary's and the
shadow's, with the same request id) to the data collector. A full queue drops the mirror
and counts it: a shadow never delays or fails an answer. On Kubernetes the gateway mirrors
instead (the HTTPRoute's RequestMirror).
"""

from __future__ import annotations

import queue
import threading
import time
import uuid
from collections.abc import Mapping
from typing import Any

import numpy as np
import orjson
from prometheus_client import Counter

from .collect import Collector
from .protocol import Request

_STOP = object()
QUEUE_SIZE = 1000
PAUSE = 0.05  # seconds between bursts of shadow work


class Shadow:
    """The shadow versions of each model (percent mirrored) and the thread that runs them."""

    def __init__(self, shadows: Mapping[str, list[tuple[Any, int]]], collector: Collector, registry: Any) -> None:
        self.shadows = {name: entries for name, entries in shadows.items() if entries}
        # A running total per shadow rather than a random draw: exactly `percent` of every hundred
        # requests is mirrored, so the share holds over any window, not only on average.
        self.credit: dict[int, int] = {}
        self.collector = collector
        self.mirrored = Counter(
            "mlops_shadow_mirrored",
            "Requests mirrored to a shadow version, after the answer.",
            ["model", "version"],
            registry=registry,
        )
        self.dropped = Counter(
            "mlops_shadow_dropped", "Mirrors dropped: the shadow's queue was full.", registry=registry
        )
        self.queue: queue.Queue[Any] = queue.Queue(maxsize=QUEUE_SIZE)
        self.thread = threading.Thread(target=self._loop, name="shadow", daemon=True)
        if self.shadows:
            collector.start()
            self.thread.start()

    def after(self, entry: Any, request: Request, payload: bytes | None, started: float) -> None:
        """Called once the primary (`entry`) has answered `request` with `payload` (JSON)."""
        shadows = self.shadows.get(entry.runtime.name)
        if not shadows or payload is None:
            return
        latency = time.perf_counter() - started
        for shadow, percent in shadows:
            if shadow is entry:
                continue
            credit = self.credit.get(id(shadow), 0) + percent
            self.credit[id(shadow)] = credit % 100
            if credit >= 100:
                try:
                    self.queue.put_nowait((shadow, entry, request, payload, latency, time.time()))
                except queue.Full:
                    self.dropped.inc()

    def _loop(self) -> None:
        # In bursts, a pause between them: the shadow's work shares the interpreter's lock with the
        # request path, and woken per job it would delay a fifth of the answers a little; woken at
        # most every PAUSE it delays a few answers, and the median not at all.
        while True:
            jobs = [self.queue.get()]
            while len(jobs) < QUEUE_SIZE:
                try:
                    jobs.append(self.queue.get_nowait())
                except queue.Empty:
                    break
            for job in jobs:
                if job is _STOP:
                    return
                try:
                    self._mirror(*job)
                except Exception:  # a failing shadow is recorded as such; it never reaches a client
                    shadow, _, request, *_ = job
                    self.collector.offer(
                        {
                            "time": time.time(),
                            "model": shadow.runtime.name,
                            "version": shadow.runtime.version,
                            "id": request.id,
                            "shadow": True,
                            "error": "the shadow version failed on this request",
                        }
                    )
            time.sleep(PAUSE)

    def _mirror(self, shadow: Any, primary: Any, request: Request, payload: bytes, latency: float, when: float) -> None:
        rid = request.id or uuid.uuid4().hex  # the pair's key, in the records only: the answer is sent
        answer = orjson.loads(payload)
        outputs = {o["name"]: o["data"] for o in answer.get("outputs", [])}
        self.collector.offer(
            {
                "time": when,
                "model": primary.runtime.name,
                "version": primary.runtime.version,
                "id": rid,
                "inputs": request.inputs,
                "outputs": outputs,
                "mirrored": True,
                "latencyMs": round(latency * 1000, 3),
            }
        )
        runtime = shadow.runtime
        began = time.perf_counter()
        if runtime.preprocess is not None:
            from .handler import call_handler as _call_handler

            feeds = runtime.check(_call_handler(runtime.preprocess, request), None)
        else:
            feeds = runtime.check(request.inputs, request.datatypes)
        result = runtime.run(feeds, None)
        if runtime.postprocess is not None:
            from .handler import call_handler as _call_handler

            result = _call_handler(runtime.postprocess, result)
        self.mirrored.labels(runtime.name, runtime.version).inc()
        self.collector.offer(
            {
                "time": time.time(),
                "model": runtime.name,
                "version": runtime.version,
                "id": rid,
                # flat, as the protocol's `data` of the primary's answer
                "outputs": {n: np.asarray(v).ravel() for n, v in result.items() if n in outputs or not outputs},
                "shadow": True,
                "latencyMs": round((time.perf_counter() - began) * 1000, 3),
            }
        )

    def close(self) -> None:
        if self.thread.is_alive():
            self.queue.put(_STOP)
            self.thread.join(10)
