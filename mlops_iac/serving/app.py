"""The model server: a plain ASGI application speaking the Open Inference Protocol v2.

Why plain ASGI and not a web framework: on small models the HTTP stack, not the model, is
the cost (see benchmarks/serving.py), and a router, request objects and middleware on the
hot path would cost more than the model itself. Routing here is a split of the path.
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import logging
import os
import random
import time
from collections.abc import Awaitable, Callable, Iterator, Mapping
from pathlib import Path

import numpy as np
import orjson

from .. import __version__
from .batching import Batcher
from .bodies import Disconnected, decompress, read_body
from .collect import Collector
from .config import ServerConfig
from .inference import Answer, Entry, feeds_of, finish, inference_headers, run_inline, runs_inline
from .metrics import Metrics
from .openapi import document
from .protocol import ClientError, Request, encode, parse
from .responses import JSON, PROMETHEUS_TEXT, Receive, Scope, Send, allow, keep_alive_10, respond
from .runtime import ModelRuntime
from .shadow import Shadow, mirroring
from .triton import EXTENSIONS, model_config, model_stats

log = logging.getLogger("mlops_iac.serving")


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
        self.collector = Collector(config.collection, base, self.metrics.drop)
        self.openapi = orjson.dumps(document(), option=orjson.OPT_SORT_KEYS)
        self.metadata = orjson.dumps({"name": "mlops-iac", "version": __version__, "extensions": EXTENSIONS})
        self.shadow: Shadow | None = None  # shadow versions, mirrored after the answer (shadow.py)
        # Requests the HTTP protocol has read whose handling has not started (the runner's
        # protocol counts them when it sets counts_arrivals): the batcher's "is anyone waiting".
        self.arrived = 0
        self.counts_arrivals = False
        # What to do when the models cannot be loaded: the runner sets it to stop the server.
        self.on_fatal: Callable[[], None] = lambda: None
        # Other listeners on this loop (gRPC) to drain before the batchers close; the runner sets it.
        self.drain_others: Callable[[], Awaitable[None]] | None = None

    # --- lifecycle ------------------------------------------------------------------------

    def load(self) -> None:
        """Load and warm every model; readiness turns true only after the last one."""
        shadows: dict[str, list[tuple[Entry, int]]] = {}
        for model in self.config.models:
            runtime = ModelRuntime(model, self.base)
            runtime.warm_up()
            labels = (model.name, str(model.version))
            batcher = (
                Batcher(
                    runtime.run,
                    model.max_batch_size,
                    model.max_delay_ms / 1000,
                    (lambda: self.arrived) if self.counts_arrivals else None,
                )
                if model.max_batch_size > 1 and runtime.batchable
                else None
            )
            entry = Entry(
                runtime,
                batcher,
                model.weight,
                self.metrics.requests.labels(*labels, "200"),
                self.metrics.latency.labels(*labels),
                self.metrics.inference.labels(*labels),
                self.metrics.queue.labels(*labels),
                self.metrics.batch.labels(*labels),
            )
            # Failures at 0 from the start: Prometheus's increase() misses the first value of a series
            # that appears mid-window, and a canary's first errors must count.
            self.metrics.requests.labels(*labels, "500")
            self.models.setdefault(model.name, {})[str(model.version)] = entry
            if model.shadow:
                shadows.setdefault(model.name, []).append((entry, model.shadow))
        for name, versions in self.models.items():
            mirrored = {id(e) for e, _ in shadows.get(name, [])}  # they answer only mirrors: never routed
            entries = [e for e in versions.values() if id(e) not in mirrored] or list(versions.values())
            weights = [e.weight for e in entries]
            self.routes[name] = (entries, weights if any(weights) else [1] * len(entries))
        self.shadow = mirroring(self.config, shadows, self.collector, self.metrics.registry, self.key)
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
        if self.drain_others is not None:
            await self.drain_others()
        for versions in self.models.values():
            for entry in versions.values():
                if entry.batcher is not None:
                    entry.batcher.close()
        if self.shadow is not None:
            await asyncio.to_thread(self.shadow.close)
        await asyncio.to_thread(self.collector.close)

    # --- ASGI ----------------------------------------------------------------------------

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            await self.http(scope, receive, send)
        elif scope["type"] == "lifespan":
            await self.lifespan(receive, send)

    async def lifespan(self, receive: Receive, send: Send) -> None:
        background: asyncio.Task[None] | None = None
        publisher: asyncio.Task[None] | None = None
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                if not self.ready:  # loaded before listening (a replacement worker): not twice
                    background = asyncio.create_task(self._load_in_background())
                if self.metrics.shared is not None:  # a worker process: its metrics meet the others'
                    publisher = asyncio.create_task(self.metrics.publish_forever())
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                if background is not None and not background.done():
                    background.cancel()
                if publisher is not None:
                    publisher.cancel()
                await self.shutdown()
                if self.metrics.shared is not None:
                    self.metrics.publish()  # the last requests count in the workers still draining
                await send({"type": "lifespan.shutdown.complete"})
                return

    async def http(self, scope: Scope, receive: Receive, send: Send) -> None:
        if self.arrived:
            self.arrived -= 1
        path, method = scope["path"], scope["method"]
        if scope["http_version"] == "1.0":
            send = keep_alive_10(scope, send)
        if path.endswith("/") and len(path) > 1:
            path = path.rstrip("/") or "/"  # /v2/ is the spec's own spelling of /v2
        try:
            if path.startswith("/v2/health/"):
                await self.health(path, method, send)
                return
            if self.key is not None and not self._authorized(scope):
                raise ClientError(401, "missing or wrong bearer token (Authorization: Bearer <key>)")
            if path.startswith("/v2/models/"):
                await self.model_route(scope, path, method, receive, send)
                return
            if path not in _FIXED:
                raise ClientError(404, f"no route {path}; see /v2/openapi.json")
            allow(path, method, "GET")
            if path == "/metrics":
                await respond(send, 200, self.metrics.render(), PROMETHEUS_TEXT)
            elif path == "/v2":
                await respond(send, 200, self.metadata)
            else:
                await respond(send, 200, self.openapi)
        except ClientError as error:
            await respond(send, error.status, orjson.dumps({"error": error.message}), JSON, error.headers)
        except Disconnected:
            return
        except Exception:
            log.exception("internal error on %s %s", method, path)
            await respond(send, 500, b'{"error":"internal server error"}')

    async def health(self, path: str, method: str, send: Send) -> None:
        if path not in ("/v2/health/live", "/v2/health/ready"):
            raise ClientError(404, f"no route {path}")
        allow(path, method, "GET")
        if path == "/v2/health/live":
            if self.failed:
                await respond(send, 500, orjson.dumps({"live": False, "error": self.failed}))
            else:
                await respond(send, 200, b'{"live":true}')
        else:
            await respond(send, 200 if self.ready else 503, orjson.dumps({"ready": self.ready}))

    def _authorized(self, scope: Scope) -> bool:
        for name, value in scope["headers"]:
            if name == b"authorization":
                return self.key_matches(value)
        return False

    def key_matches(self, credentials: bytes) -> bool:
        """`Bearer <key>`, the scheme in any case (RFC 9110: auth schemes are case-insensitive)."""
        assert self.key is not None
        scheme, _, token = credentials.partition(b" ")
        # self.key is b"Bearer " + the key; the token is compared in constant time.
        return scheme.lower() == b"bearer" and hmac.compare_digest(token.lstrip(b" "), self.key[7:])

    async def model_route(self, scope: Scope, path: str, method: str, receive: Receive, send: Send) -> None:
        # parts: [name] [versions, v] [infer | ready | config | stats]
        parts = path.split("/")[3:]
        if not parts or not parts[0]:
            raise ClientError(404, "name a model: /v2/models/{name}")
        if parts == ["stats"] and "stats" not in self.models:  # Triton: every model's statistics
            allow(path, method, "GET")
            entries = [e for _, versions in sorted(self.models.items()) for _, e in sorted(versions.items())]
            await respond(send, 200, model_stats(self.metrics.requests, entries))
            return
        name, rest, version = parts[0], parts[1:], None
        if len(rest) >= 2 and rest[0] == "versions":
            version, rest = rest[1], rest[2:]
        action = rest[0] if rest else ""
        if len(rest) > 1 or action not in ("", "ready", "infer", "config", "stats"):
            raise ClientError(404, f"no route {path}; see /v2/openapi.json")
        if action == "infer":
            allow(path, method, "POST")
            await self.infer(scope, name, version, receive, send)
            return
        allow(path, method, "GET")
        entry = self.pick(name, version)
        if action == "ready":
            await respond(send, 200, orjson.dumps({"name": name, "ready": self.ready}))
        elif action == "config":
            await respond(send, 200, orjson.dumps(model_config(entry.runtime)))
        elif action == "stats":
            entries = [entry] if version is not None else [e for _, e in sorted(self.models[name].items())]
            await respond(send, 200, model_stats(self.metrics.requests, entries))
        else:
            data = entry.runtime.metadata()
            data["versions"] = sorted(self.models[name])
            await respond(send, 200, orjson.dumps(data))

    def pick(self, name: str, version: str | None) -> Entry:
        versions = self.models.get(name)
        if versions is None:
            if not self.ready:
                raise ClientError(503, "the models are still loading")
            raise ClientError(404, f"model {name!r} is not served here; models: " + ", ".join(sorted(self.models)))
        if version is not None:
            entry = versions.get(version)
            if entry is None:
                raise ClientError(
                    404, f"{name} has no version {version!r} here; versions: " + ", ".join(sorted(versions))
                )
            return entry
        entries, weights = self.routes[name]
        if len(entries) == 1:
            return entries[0]
        chosen = random.choices(entries, weights)[0]  # noqa: S311 - traffic split, not security
        self.metrics.traffic.labels(name, chosen.runtime.version).inc()
        return chosen

    async def infer(self, scope: Scope, name: str, version: str | None, receive: Receive, send: Send) -> None:
        started = time.perf_counter()
        entry = self.pick(name, version)
        header_length, encoding, declared = inference_headers(scope)
        body = await read_body(receive, declared, self.config.max_body_bytes)
        if encoding:
            body = decompress(body, encoding, self.config.max_body_bytes)
        request = parse(body, header_length)
        request.held = self.shadow is not None and self.shadow.covers(entry)
        with self.counted(entry):
            outputs = await self.outputs(entry, request, started)
            payload, header = encode(entry.runtime.name, entry.runtime.version, request, outputs)
        extra = [(b"inference-header-content-length", str(header).encode())] if header is not None else []
        await respond(send, 200, payload, JSON if header is None else b"application/octet-stream", extra)
        if self.shadow is not None:  # after the answer went out: a shadow never delays it
            self.shadow.after(entry, request, payload if header is None else None, started)

    def infer_now(self, scope: Scope, body: bytes) -> Answer | None:
        """An inference request whose body is already read, answered at once (from the HTTP
        protocol's callback, without the ASGI task, see http11.py); None when it is not the
        common case (another route's spelling, an unknown model, a compressed or too large
        body, a batcher that would merge it), with nothing done: the ASGI path takes it."""
        parts = scope["path"].split("/")  # "", v2, models, name, [versions, v,] infer
        if len(parts) == 5:
            name, version = parts[3], None
        elif len(parts) == 7 and parts[4] == "versions":
            name, version = parts[3], parts[5]
        else:
            return None
        versions = self.models.get(name)
        if versions is None or len(body) > self.config.max_body_bytes:
            return None
        header_length, encoding, _ = inference_headers(scope)
        if encoding:
            return None
        counted = self.arrived > 0
        self.arrived -= counted  # this one is being handled: the batchers' "anyone waiting" leaves it out
        if not all(runs_inline(e) for e in versions.values()):
            self.arrived += counted  # the ASGI path counts it off again
            return None
        started = time.perf_counter()
        try:
            if self.key is not None and not self._authorized(scope):
                raise ClientError(401, "missing or wrong bearer token (Authorization: Bearer <key>)")
            entry = self.pick(name, version)
            request = parse(body, header_length)
            request.held = self.shadow is not None and self.shadow.covers(entry)
            with self.counted(entry):
                outputs = self.outputs_now(entry, request, started)
                payload, header = encode(entry.runtime.name, entry.runtime.version, request, outputs)
        except ClientError as error:
            return Answer(error.status, orjson.dumps({"error": error.message}), JSON, error.headers or [])
        except Exception:
            log.exception("internal error on POST %s", scope["path"])
            return Answer(500, b'{"error":"internal server error"}', JSON, [])
        if header is None:
            return Answer(200, payload, JSON, [], self._mirror(entry, request, payload, started))
        extra = [(b"inference-header-content-length", str(header).encode())]
        return Answer(200, payload, b"application/octet-stream", extra, self._mirror(entry, request, None, started))

    def _mirror(self, entry: Entry, request: Request, payload: bytes | None, started: float) -> Callable[[], None]:
        """What to do once the answer went out: mirror to the shadow versions, if any."""
        shadow = self.shadow
        if shadow is None:
            return _nothing
        return lambda: shadow.after(entry, request, payload, started)

    @contextlib.contextmanager
    def counted(self, entry: Entry) -> Iterator[None]:
        """A request counted once, by the status it is answered with: 200 only when its answer
        is encoded too (an output that cannot be encoded is a 500), so a failing version shows
        in its error rate, which a rollout decides on. REST and gRPC alike."""
        try:
            yield
        except ClientError as error:
            self.metrics.requests.labels(entry.runtime.name, entry.runtime.version, str(error.status)).inc()
            raise
        except Exception:  # answered 500; counted all the same
            self.metrics.requests.labels(entry.runtime.name, entry.runtime.version, "500").inc()
            raise
        entry.ok.inc()

    async def outputs(self, entry: Entry, request: Request, started: float) -> dict[str, np.ndarray]:
        """One request's outputs through the model's batcher (or inline), counted and collected:
        the REST and gRPC paths alike; each encodes the answer its own way."""
        feeds, names, rows = feeds_of(entry, request)
        batcher = entry.batcher
        if batcher is None or runs_inline(entry, rows):
            return run_inline(entry, request, feeds, names, rows, started, self.collector)
        outputs, queued, batch_rows = await batcher.submit(feeds)
        entry.queue.observe(queued)
        entry.batch.observe(batch_rows)
        if names is not None:
            outputs = {n: outputs[n] for n in names}
        inference = time.perf_counter() - started - queued
        return finish(entry, request, feeds, outputs, rows, inference, started, self.collector)

    def outputs_now(self, entry: Entry, request: Request, started: float) -> dict[str, np.ndarray]:
        """`outputs` where the batcher is quiet or absent (infer_now checked): inline, at once."""
        return run_inline(entry, request, *feeds_of(entry, request), started, self.collector)


def _nothing() -> None:
    pass


# Paths outside /v2/models/ and /v2/health/, all GET.
_FIXED = frozenset(("/metrics", "/v2", "/v2/openapi.json", "/openapi.json"))
