"""Shadow traffic: a share of a model's requests mirrored to a version that answers none of
them, after the primary's answer has gone out.

The request path only adds the shadow's percent to a running total per shadow version and,
each time it passes 100, puts the parsed request and the primary's answer on a bounded
queue; a worker thread runs the shadow model and hands both records (the primary's and the
shadow's, with the same request id) to the data collector. A full queue drops the mirror
and counts it: a shadow never delays or fails an answer. The shadow is either a version this
server loads (local targets) or, on a Docker host where each version has its own container, a
`Remote`: another server the worker thread sends the request to over HTTP (`mirrors` in the
settings). On Kubernetes the gateway mirrors instead (the HTTPRoute's RequestMirror).
"""

from __future__ import annotations

import contextlib
import http.client
import queue
import threading
import time
import uuid
from collections.abc import Mapping
from typing import Any
from urllib.parse import urlsplit

import numpy as np
import orjson
from prometheus_client import Counter

from .collect import Collector
from .config import MirrorConfig, ServerConfig
from .protocol import Request, to_bytes

_STOP = object()
QUEUE_SIZE = 1000
PAUSE = 0.05  # seconds between bursts of shadow work
TIMEOUT = 10.0  # seconds a remote shadow may take to answer; slower ones fill the queue, then drop
# What a kept-alive connection the server closed while it idled looks like (the request was not read).
STALE = (http.client.RemoteDisconnected, BrokenPipeError, ConnectionResetError)


class Remote:
    """A shadow version served by another server, reached over HTTP on one kept-alive connection
    (used by the shadow thread alone)."""

    def __init__(self, config: MirrorConfig, authorization: bytes | None) -> None:
        url = urlsplit(config.url)
        if url.scheme != "http" or not url.hostname:
            raise ValueError(f"mirror to {config.model} v{config.version}: expected an http:// URL, got {config.url!r}")
        self.host, self.port = url.hostname, url.port or 80
        self.path = f"{url.path.rstrip('/')}/v2/models/{config.model}/versions/{config.version}/infer"
        self.name, self.version = config.model, str(config.version)
        self.headers = {"Content-Type": "application/octet-stream"}
        if authorization is not None:  # the deployment's key: its versions share it
            self.headers["Authorization"] = authorization.decode()
        self.conn: http.client.HTTPConnection | None = None

    def answer(self, request: Request, rid: str) -> dict[str, Any]:
        """The shadow's outputs for `request`, sent under the pair's id; raises when it fails."""
        body, header = mirror_body(request, rid)
        headers = {**self.headers, "Inference-Header-Content-Length": str(header)}
        while True:
            reused = self.conn is not None
            if self.conn is None:
                self.conn = http.client.HTTPConnection(self.host, self.port, timeout=TIMEOUT)
            try:
                self.conn.request("POST", self.path, body, headers)
                response = self.conn.getresponse()
                data = response.read()
                break
            except STALE:
                self.close()
                if not reused:
                    raise
                # The server closed the kept-alive connection while it idled: once more on a new one.
            except (OSError, http.client.HTTPException):
                self.close()  # never sent again: a timed-out mirror may have run, and would run twice
                raise
        if response.status != 200:
            raise RuntimeError(f"the shadow answered {response.status}: {data[:200]!r}")
        doc = orjson.loads(data)
        if doc.get("model_version") != self.version:  # never record another version's answer as the shadow's
            raise RuntimeError(f"expected version {self.version}, answered by {doc.get('model_version')!r}")
        return {o["name"]: o["data"] for o in doc["outputs"]}

    def close(self) -> None:
        if self.conn is not None:
            self.conn.close()
            self.conn = None
            self.conn = None


def mirror_body(request: Request, rid: str) -> tuple[bytes, int]:
    """The request again, every input as binary tensor data: exact for every datatype (BF16's
    bits, BYTES that are not UTF-8) with no JSON of the numbers to write. The answer is JSON."""
    described, blobs = [], []
    for name, array in request.inputs.items():
        blob = to_bytes(array)
        described.append(
            {
                "name": name,
                "datatype": request.datatypes[name],
                "shape": list(array.shape),
                "parameters": {"binary_data_size": len(blob)},
            }
        )
        blobs.append(blob)
    head: dict[str, Any] = {"id": rid, "inputs": described}
    parameters = {k: v for k, v in request.parameters.items() if k != "binary_data_output"}
    if parameters:
        head["parameters"] = parameters
    header = orjson.dumps(head)
    return header + b"".join(blobs), len(header)


def mirroring(
    config: ServerConfig,
    local: Mapping[str, list[tuple[Any, int]]],
    collector: Collector,
    registry: Any,
    authorization: bytes | None,
) -> Shadow | None:
    """The server's shadows: the versions it loads with a `shadow` percent (`local`, by model)
    and the `mirrors` of its settings, served elsewhere; None without any."""
    shadows = {name: list(entries) for name, entries in local.items()}
    for mirror in config.mirrors:
        shadows.setdefault(mirror.model, []).append((Remote(mirror, authorization), mirror.percent))
    return Shadow(shadows, collector, registry) if any(shadows.values()) else None


def _identity(shadow: Any) -> tuple[str, str]:
    if isinstance(shadow, Remote):
        return shadow.name, shadow.version
    return shadow.runtime.name, shadow.runtime.version


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
            "mlops_shadow_dropped",
            "Mirrors dropped: the shadow's queue was full, or they were still queued at shutdown.",
            registry=registry,
        )
        self.stopping = threading.Event()
        self.queue: queue.Queue[Any] = queue.Queue(maxsize=QUEUE_SIZE)
        self.thread = threading.Thread(target=self._loop, name="shadow", daemon=True)
        if self.shadows:
            collector.start()
            self.thread.start()

    def covers(self, entry: Any) -> bool:
        """Whether requests to `entry` may be mirrored: their sampled record is then held (see after)."""
        return entry.runtime.name in self.shadows

    def after(self, entry: Any, request: Request, payload: bytes | None, started: float) -> None:
        """Called once the primary (`entry`) has answered `request` with `payload` (JSON).

        The primary's record of a mirrored request is written once, by the first mirror queued
        (marked `mirrored`, which the shadow report pairs): a record sampled by collection is
        then dropped, and written as it is when nothing is mirrored, so no request counts twice."""
        shadows = self.shadows.get(entry.runtime.name) if payload is not None else None
        latency = time.perf_counter() - started
        rid = request.id or uuid.uuid4().hex  # one key for every shadow's record of this request
        primary_written = False
        for shadow, percent in shadows or ():
            if shadow is entry:
                continue
            credit = self.credit.get(id(shadow), 0) + percent
            self.credit[id(shadow)] = credit % 100
            if credit >= 100:
                job = (rid, not primary_written, shadow, entry, request, payload, latency, time.time())
                try:
                    self.queue.put_nowait(job)
                    primary_written = True
                except queue.Full:
                    self.dropped.inc()
        if request.record is not None and not primary_written:
            self.collector.offer(request.record)

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
                if job is _STOP or self.stopping.is_set():
                    return
                # job[0], the pair's key, is in the records only (the answer is sent): the failure's too
                try:
                    self._mirror(*job)
                except Exception:  # a failing shadow is recorded as such; it never reaches a client
                    rid, name, version = job[0], *_identity(job[2])
                    self.collector.offer(
                        {
                            "time": time.time(),
                            "model": name,
                            "version": version,
                            "id": rid,
                            "shadow": True,
                            "error": "the shadow version failed on this request",
                        }
                    )
            time.sleep(PAUSE)

    def _mirror(
        self,
        rid: str,
        write_primary: bool,
        shadow: Any,
        primary: Any,
        request: Request,
        payload: bytes,
        latency: float,
        when: float,
    ) -> None:
        answer = orjson.loads(payload)
        outputs = {o["name"]: o["data"] for o in answer.get("outputs", [])}
        if write_primary:  # once per request, however many shadows mirror it
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
        began = time.perf_counter()
        result = shadow.answer(request, rid) if isinstance(shadow, Remote) else _run(shadow.runtime, request)
        name, version = _identity(shadow)
        self.mirrored.labels(name, version).inc()
        self.collector.offer(
            {
                "time": time.time(),
                "model": name,
                "version": version,
                "id": rid,
                # flat, as the protocol's `data` of the primary's answer
                "outputs": {n: np.asarray(v).ravel() for n, v in result.items() if n in outputs or not outputs},
                "shadow": True,
                # a remote shadow's is the round trip from here: its run and the network's share
                "latencyMs": round((time.perf_counter() - began) * 1000, 3),
            }
        )

    def close(self) -> None:
        """Stops within the mirror in flight (a remote one: TIMEOUT at most): what is still queued
        is dropped and counted, so a slow shadow never holds the server's drain, and the
        collector, closed next, keeps every primary record written so far."""
        if self.thread.is_alive():
            self.stopping.set()
            while True:
                try:
                    self.dropped.inc(self.queue.get_nowait() is not _STOP)
                except queue.Empty:
                    break
            with contextlib.suppress(queue.Full):
                self.queue.put_nowait(_STOP)  # wakes the thread if it waits on the empty queue
            self.thread.join(TIMEOUT + 1)
        for entries in self.shadows.values():
            for shadow, _ in entries:
                if isinstance(shadow, Remote):
                    shadow.close()


def _run(runtime: Any, request: Request) -> dict[str, Any]:
    """A loaded shadow version's outputs for `request`, with the model's handler as the server runs it."""
    from .handler import call_handler

    if runtime.preprocess is not None:
        feeds = runtime.check(call_handler(runtime.preprocess, request), None)
    else:
        feeds = runtime.check(request.inputs, request.datatypes)
    result: dict[str, Any] = runtime.run(feeds, None)
    if runtime.postprocess is not None:
        result = call_handler(runtime.postprocess, result)
    return result
