"""The model server: a plain ASGI application speaking the Open Inference Protocol v2.

Why plain ASGI and not a web framework: on small models the HTTP stack, not the model, is
the cost (see shared/PERFORMANCE.md), and a router, request objects and middleware on the
hot path would cost more than the model itself. Routing here is a split of the path.
"""

from __future__ import annotations

import asyncio
import gzip
import hmac
import logging
import os
import random
import time
import zlib
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import orjson

from .. import __version__
from .batching import Batcher
from .collect import Collector
from .config import ServerConfig
from .metrics import Metrics
from .openapi import document
from .protocol import ClientError, Request, encode, parse
from .runtime import ModelRuntime

log = logging.getLogger("mlops_iac.serving")
Scope = dict[str, Any]
Receive = Callable[[], Awaitable[dict[str, Any]]]
Send = Callable[[dict[str, Any]], Awaitable[None]]
JSON = b"application/json"


class _Disconnected(Exception):
    pass


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


class Server:
    def __init__(self, config: ServerConfig, base: Path, env: Mapping[str, str] | None = None) -> None:
        env = os.environ if env is None else env
        self.config, self.base = config, base
        self.metrics = Metrics()
        self.ready = False
        self.failed: str | None = None
        self.models: dict[str, dict[str, Entry]] = {}
        self.routes: dict[str, tuple[list[Entry], list[int]]] = {}
        self.key: bytes | None = None
        if config.auth:
            key = env.get(config.api_key_env, "")
            if not key:
                raise ValueError(f"auth is `key` but {config.api_key_env} is not set")
            self.key = f"Bearer {key}".encode()
        self.collector = Collector(config.collection, base, self.metrics.dropped.inc)
        self.openapi = orjson.dumps(document(), option=orjson.OPT_SORT_KEYS)
        self.metadata = orjson.dumps({"name": "mlops-iac", "version": __version__,
                                      "extensions": ["binary_tensor_data"]})
        # What to do when the models cannot be loaded: the runner sets it to stop the server.
        self.on_fatal: Callable[[], None] = lambda: None

    # --- lifecycle ------------------------------------------------------------------------

    def load(self) -> None:
        """Load and warm every model; readiness turns true only after the last one."""
        for model in self.config.models:
            runtime = ModelRuntime(model, self.base)
            runtime.warm_up()
            labels = (model.name, str(model.version))
            batcher = (Batcher(runtime.run, model.max_batch_size, model.max_delay_ms / 1000)
                       if model.max_batch_size > 1 and runtime.batchable else None)
            entry = Entry(runtime, batcher, model.weight,
                          self.metrics.requests.labels(*labels, "200"),
                          self.metrics.latency.labels(*labels), self.metrics.inference.labels(*labels),
                          self.metrics.queue.labels(*labels), self.metrics.batch.labels(*labels))
            # Failures at 0 from the start: Prometheus's increase() misses the first value of a series
            # that appears mid-window, and a canary's first errors must count.
            self.metrics.requests.labels(*labels, "500")
            self.models.setdefault(model.name, {})[str(model.version)] = entry
        for name, versions in self.models.items():
            entries = list(versions.values())
            weights = [e.weight for e in entries]
            self.routes[name] = (entries, weights if any(weights) else [1] * len(entries))
        self.ready = True
        self.metrics.ready.set(1)

    async def _load_in_background(self) -> None:
        try:
            await asyncio.to_thread(self.load)
        except Exception as exc:
            self.failed = f"{type(exc).__name__}: {exc}"
            log.error("loading the models failed: %s", self.failed)
            self.on_fatal()

    async def shutdown(self) -> None:
        self.ready = False
        self.metrics.ready.set(0)
        for versions in self.models.values():
            for entry in versions.values():
                if entry.batcher is not None:
                    entry.batcher.close()
        await asyncio.to_thread(self.collector.close)

    # --- ASGI ----------------------------------------------------------------------------

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            await self.http(scope, receive, send)
        elif scope["type"] == "lifespan":
            await self.lifespan(receive, send)

    async def lifespan(self, receive: Receive, send: Send) -> None:
        background: asyncio.Task[None] | None = None
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                background = asyncio.create_task(self._load_in_background())
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                if background is not None and not background.done():
                    background.cancel()
                await self.shutdown()
                await send({"type": "lifespan.shutdown.complete"})
                return

    async def http(self, scope: Scope, receive: Receive, send: Send) -> None:
        path, method = scope["path"], scope["method"]
        try:
            if path.startswith("/v2/health/"):
                await self.health(path, method, send)
                return
            if self.key is not None and not self._authorized(scope):
                raise ClientError(401, "missing or wrong bearer token (Authorization: Bearer <key>)")
            if path == "/metrics" and method == "GET":
                await respond(send, 200, self.metrics.render(), b"text/plain; version=0.0.4")
            elif path == "/v2" and method == "GET":
                await respond(send, 200, self.metadata)
            elif path in ("/v2/openapi.json", "/openapi.json") and method == "GET":
                await respond(send, 200, self.openapi)
            elif path.startswith("/v2/models/"):
                await self.model_route(scope, path.split("/")[3:], method, receive, send)
            else:
                raise ClientError(404, f"no route {path}; see /v2/openapi.json")
        except ClientError as error:
            await respond(send, error.status, orjson.dumps({"error": error.message}))
        except _Disconnected:
            return
        except Exception:
            log.exception("internal error on %s %s", method, path)
            await respond(send, 500, b'{"error":"internal server error"}')

    async def health(self, path: str, method: str, send: Send) -> None:
        if method != "GET":
            raise ClientError(405, f"{path} takes GET")
        if path == "/v2/health/live":
            if self.failed:
                await respond(send, 500, orjson.dumps({"live": False, "error": self.failed}))
            else:
                await respond(send, 200, b'{"live":true}')
        elif path == "/v2/health/ready":
            await respond(send, 200 if self.ready else 503, orjson.dumps({"ready": self.ready}))
        else:
            raise ClientError(404, f"no route {path}")

    def _authorized(self, scope: Scope) -> bool:
        for name, value in scope["headers"]:
            if name == b"authorization":
                assert self.key is not None
                return hmac.compare_digest(value, self.key)  # constant time
        return False

    async def model_route(self, scope: Scope, parts: list[str], method: str, receive: Receive,
                          send: Send) -> None:
        # parts: [name] [versions, v] [infer | ready]
        if not parts or not parts[0]:
            raise ClientError(404, "name a model: /v2/models/{name}")
        name, rest, version = parts[0], parts[1:], None
        if len(rest) >= 2 and rest[0] == "versions":
            version, rest = rest[1], rest[2:]
        action = rest[0] if rest else ""
        if len(rest) > 1 or action not in ("", "ready", "infer"):
            raise ClientError(404, f"no route {scope['path']}; see /v2/openapi.json")
        if action == "infer":
            if method != "POST":
                raise ClientError(405, "infer takes POST")
            await self.infer(scope, name, version, receive, send)
            return
        if method != "GET":
            raise ClientError(405, f"{scope['path']} takes GET")
        entry = self.pick(name, version)
        if action == "ready":
            await respond(send, 200, orjson.dumps({"name": name, "ready": self.ready}))
        else:
            data = entry.runtime.metadata()
            data["versions"] = sorted(self.models[name])
            await respond(send, 200, orjson.dumps(data))

    def pick(self, name: str, version: str | None) -> Entry:
        versions = self.models.get(name)
        if versions is None:
            if not self.ready:
                raise ClientError(503, "the models are still loading")
            raise ClientError(404, f"model {name!r} is not served here; models: "
                                   + ", ".join(sorted(self.models)))
        if version is not None:
            entry = versions.get(version)
            if entry is None:
                raise ClientError(404, f"{name} has no version {version!r} here; versions: "
                                       + ", ".join(sorted(versions)))
            return entry
        entries, weights = self.routes[name]
        if len(entries) == 1:
            return entries[0]
        chosen = random.choices(entries, weights)[0]  # noqa: S311 - traffic split, not security
        self.metrics.traffic.labels(name, chosen.runtime.version).inc()
        return chosen

    async def infer(self, scope: Scope, name: str, version: str | None, receive: Receive,
                    send: Send) -> None:
        started = time.perf_counter()
        entry = self.pick(name, version)
        header_length, encoding, declared = None, None, None
        for key, value in scope["headers"]:
            if key == b"inference-header-content-length":
                header_length = value.decode("latin-1")
            elif key == b"content-encoding":
                encoding = value.decode("latin-1").lower()
            elif key == b"content-length":
                declared = value
        body = await self.read_body(receive, declared)
        if encoding:
            body = self.decompress(body, encoding)
        request = parse(body, header_length)
        try:
            status, payload, header = await self.run(entry, request, started)
        except ClientError as error:
            self.metrics.requests.labels(name, entry.runtime.version, str(error.status)).inc()
            raise
        except Exception:  # answered 500 by http(); counted, so a failing version shows in its error rate
            self.metrics.requests.labels(name, entry.runtime.version, "500").inc()
            raise
        extra = [(b"inference-header-content-length", str(header).encode())] if header is not None else []
        await respond(send, status, payload, JSON if header is None else b"application/octet-stream", extra)

    async def run(self, entry: Entry, request: Request, started: float) -> tuple[int, bytes, int | None]:
        runtime = entry.runtime
        feeds = request.inputs
        if runtime.preprocess is not None:
            feeds = _call_handler(runtime.preprocess, request)
            runtime.check(feeds, None)
        else:
            runtime.check(feeds, request.datatypes)
        names = runtime.check_outputs(request.outputs) if runtime.postprocess is None else None
        rows = int(next(iter(feeds.values())).shape[0]) if feeds else 0
        if entry.batcher is not None and 0 < rows <= entry.batcher.max_rows:
            outputs, queued, batch_rows = await entry.batcher.submit(feeds)
            entry.queue.observe(queued)
            entry.batch.observe(batch_rows)
            inference = time.perf_counter() - started - queued
            if names is not None:
                outputs = {n: outputs[n] for n in names}
        else:
            before = time.perf_counter()
            outputs = runtime.run(feeds, names)
            inference = time.perf_counter() - before
        if runtime.postprocess is not None:
            outputs = _call_handler(runtime.postprocess, outputs)
            if request.outputs is not None:
                outputs = {n: outputs[n] for n in request.outputs if n in outputs}
        payload, header = encode(runtime.name, runtime.version, request, outputs)
        entry.inference.observe(inference)
        entry.latency.observe(time.perf_counter() - started)
        entry.ok.inc()
        if self.collector.sampled():
            self.collector.offer({"time": time.time(), "model": runtime.name, "version": runtime.version,
                                  "id": request.id, "inputs": feeds, "outputs": outputs,
                                  "latencyMs": round((time.perf_counter() - started) * 1000, 3)})
        return 200, payload, header

    async def read_body(self, receive: Receive, declared: bytes | None) -> bytes:
        limit = self.config.max_body_bytes
        if declared is not None and declared.isdigit() and int(declared) > limit:
            raise ClientError(413, f"the body is {int(declared)} bytes; the limit is {limit}")
        chunks, size = [], 0
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                raise _Disconnected
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > limit:
                raise ClientError(413, f"the body is over the limit of {limit} bytes")
            chunks.append(chunk)
            if not message.get("more_body"):
                return chunks[0] if len(chunks) == 1 else b"".join(chunks)

    def decompress(self, body: bytes, encoding: str) -> bytes:
        if encoding not in ("gzip", "deflate"):
            raise ClientError(415, f"Content-Encoding {encoding!r} is not supported; use gzip or deflate")
        limit = self.config.max_body_bytes
        inflater = zlib.decompressobj(wbits=31 if encoding == "gzip" else 15)
        try:
            out = inflater.decompress(body, limit + 1)  # a bomb stops at the limit
        except (zlib.error, gzip.BadGzipFile) as exc:
            raise ClientError(400, f"the {encoding} body is corrupt: {exc}") from None
        if len(out) > limit or inflater.unconsumed_tail:
            raise ClientError(413, f"the decompressed body is over the limit of {limit} bytes")
        return out


def _call_handler(func: Callable[[Any], Any], value: Any) -> dict[str, np.ndarray]:
    try:
        result = func(value)
    except (ValueError, KeyError, TypeError) as exc:
        raise ClientError(400, f"the model's handler refused the request: {exc}") from None
    if not isinstance(result, dict):
        raise TypeError(f"the handler returned {type(result).__name__}, not a dict of arrays")
    return {k: np.asarray(v) for k, v in result.items()}


async def respond(send: Send, status: int, body: bytes, content_type: bytes = JSON,
                  extra: list[tuple[bytes, bytes]] | None = None) -> None:
    headers = [(b"content-type", content_type), (b"content-length", str(len(body)).encode())]
    if extra:
        headers.extend(extra)
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})
