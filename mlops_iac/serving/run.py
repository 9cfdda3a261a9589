"""Running the server under uvicorn, with uvloop and httptools, draining on SIGTERM."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from ..errors import MlopsIacError
from .app import Server
from .config import ServerConfig
from .metrics_listener import MetricsListener

# How long SIGTERM waits for requests in flight (Kubernetes gives 30 s by default).
DRAIN_SECONDS = 25


def bind(host: str, port: int, *, reuse_port: bool = False) -> socket.socket:
    """The listening socket, bound before anything is announced; port 0 picks a free port.

    A port in use is the user's problem to fix, so it is one clear error, not a traceback
    after a "serving on ..." line that was never true.
    """
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    try:
        return socket.create_server((host, port), family=family, backlog=2048, reuse_port=reuse_port)
    except OSError as exc:
        reason = os.strerror(exc.errno) if exc.errno else str(exc)
        raise MlopsIacError(
            f"cannot listen on {host}:{port}: {reason}; choose another port with --port (0 picks a free one)"
        ) from None


def _protocol(server: Server | None = None) -> type:
    """uvicorn's httptools protocol, with two changes on the response path:

    - HTTP/1.0 connections that ask for keep-alive are kept (uvicorn closes every HTTP/1.0
      connection; nginx speaks HTTP/1.0 to upstreams by default);
    - a response goes out in one write, headers and body together (`_one_write_cycle`):
      uvicorn writes the headers at `http.response.start` and the body after, two syscalls
      where one does, about a fifth of the CPU of a small model's request.
    """
    from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

    cycle_class = _one_write_cycle()

    class ServingProtocol(HttpToolsProtocol):
        def on_headers_complete(self) -> None:
            before = self.cycle
            super().on_headers_complete()
            if self.cycle is None or self.cycle is before:
                return  # an upgrade, or a request refused before it had a cycle
            if server is not None:
                server.arrived += 1  # read; its task starts later (see Batcher.waiting)
            # uvicorn names its cycle class inside on_headers_complete; the cycle's task has not
            # run yet, so its class can still change (a subclass with the same state).
            self.cycle.__class__ = cycle_class
            if self.parser.get_http_version() == "1.0" and self.parser.should_keep_alive():
                self.cycle.keep_alive = True

    return ServingProtocol


class _Gather:
    """Stands in for the transport while uvicorn's cycle writes one response: keeps the writes
    so they leave in one; a close asked for meanwhile happens after that write."""

    __slots__ = ("closing", "parts", "transport")

    def __init__(self, transport: Any) -> None:
        self.transport, self.closing = transport, False
        self.parts: list[bytes] = []

    def write(self, data: bytes) -> None:
        self.parts.append(data)

    def close(self) -> None:
        self.closing = True

    def is_closing(self) -> bool:
        return self.closing or bool(self.transport.is_closing())


def _one_write_cycle() -> type:
    from uvicorn.protocols.http import httptools_impl as uv
    from uvicorn.protocols.http.httptools_impl import RequestResponseCycle

    class OneWriteCycle(RequestResponseCycle):
        """Holds `http.response.start` until the body that ends the response, then writes both
        at once. The common answer (a whole body with its content-length, keep-alive or close)
        is written here, with uvicorn's header checks; anything else (HEAD, chunked, a
        connection header, write back-pressure) goes through uvicorn's own `send`, still into
        one write."""

        held: Any = None

        async def send(self, message: Any) -> None:
            if message["type"] == "http.response.start" and not self.response_started:
                self.held = message  # a second start (uvicorn's 500 after an error) replaces it
                return
            if self.held is None:
                await super().send(message)
                return
            start, self.held = self.held, None
            if not self._write_whole(start, message):
                await self._send_gathered(start, message)

        def _write_whole(self, start: Any, message: Any) -> bool:
            """The response in one write, when it is the common case; False to leave it to uvicorn."""
            if (
                message["type"] != "http.response.body"
                or message.get("more_body", False)
                or self.disconnected
                or self.flow.write_paused
                or self.access_log
                or self.scope["method"] == "HEAD"
            ):
                return False
            body = message.get("body", b"")
            content, length = [uv.STATUS_LINE[start["status"]]], None
            for name, value in (*self.default_headers, *start.get("headers", ())):
                if uv.HEADER_RE.search(name) or uv.HEADER_VALUE_RE.search(value):
                    return False  # uvicorn refuses it, with its own error
                name = name.lower()
                if name == b"content-length":
                    length = value
                elif name in (b"connection", b"transfer-encoding"):
                    return False
                content.extend((name, b": ", value, b"\r\n"))
            if length is None or length != str(len(body)).encode():
                return False
            if not self.keep_alive:
                content.append(b"connection: close\r\n")
            content.extend((b"\r\n", body))
            self.response_started = True
            self.waiting_for_100_continue = False
            self.transport.write(b"".join(content))
            self.response_complete = True
            self.message_event.set()
            if not self.keep_alive:
                self.transport.close()
            self.on_response()
            return True

        async def _send_gathered(self, start: Any, message: Any) -> None:
            transport = self.transport
            gather = _Gather(transport)
            self.transport = gather  # type: ignore[assignment]
            try:
                await super().send(start)
                await super().send(message)
            finally:
                self.transport = transport
                if gather.parts and not transport.is_closing():
                    transport.write(b"".join(gather.parts))
                if gather.closing:
                    transport.close()

    return OneWriteCycle


def serve(
    config: ServerConfig,
    base: Path,
    host: str,
    port: int,
    *,
    log_level: str = "warning",
    sock: socket.socket | None = None,
) -> None:
    """Serves until SIGTERM: in this process, or in `config.workers` worker processes (REST
    on every one; gRPC, with `grpc_port`, on the first: see `workers.supervise`)."""
    from .workers import supervise, worker_count

    count = worker_count(config.workers)
    if count == 1:
        serve_one(config, base, [sock] if sock is not None else None, host=host, port=port, log_level=log_level)
        return
    check_workers(config, count)
    sockets = [sock if sock is not None else bind(host, port, reuse_port=True)]
    if config.metrics_port is not None:
        sockets.append(bind(host, config.metrics_port))
    supervise(config, base, sockets, count, log_level)


def check_workers(config: ServerConfig, count: int) -> None:
    """What several workers cannot do, refused before anything listens."""
    if count > 1 and config.collection.enabled and config.collection.sink == "file":
        raise MlopsIacError(
            f"collection.sink is `file` with {count} workers: one file takes one writer; "
            "set workers to 1, or collection.sink to `stdout` or `http`"
        )


def uvicorn_config(server: Server, host: str = "127.0.0.1", port: int = 0, log_level: str = "warning") -> Any:
    """uvicorn's settings for the main listener (also what benchmarks/request_path.py times)."""
    import uvicorn

    return uvicorn.Config(
        server,
        host=host,
        port=port,
        loop="uvloop",
        http=_protocol(server),
        lifespan="on",
        log_level=log_level,
        access_log=False,
        timeout_graceful_shutdown=DRAIN_SECONDS,
        server_header=False,
        date_header=False,
        # No X-Forwarded-* rewriting of the client address: nothing here reads it, and the
        # middleware would be one more coroutine around every request.
        proxy_headers=False,
    )


def serve_one(
    config: ServerConfig,
    base: Path,
    sockets: list[socket.socket] | None,
    *,
    host: str = "127.0.0.1",
    port: int = 0,
    log_level: str = "warning",
    shared: tuple[Path, int] | None = None,
) -> None:
    """One server process; `sockets`: the main listener and, with a metrics port, its listener;
    `shared`: the folder where the workers' metrics meet, and this worker's number."""
    import uvicorn

    try:
        server = Server(config, base)
    except ValueError as exc:
        raise MlopsIacError(str(exc)) from None
    if shared is not None:
        server.metrics.share(*shared)
    server.counts_arrivals = True
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    uv = _main_server()(uvicorn_config(server, host, port, log_level))
    server.on_fatal = lambda: setattr(uv, "should_exit", True)
    main = sockets[:1] if sockets else None
    if config.metrics_port is None and config.grpc_port is None:
        uv.run(sockets=main)
    else:
        side = (
            None
            if config.metrics_port is None
            else _quiet_server()(
                uvicorn.Config(
                    MetricsListener(server),
                    host=host,
                    port=config.metrics_port,
                    loop="uvloop",
                    http="httptools",
                    lifespan="off",
                    log_level=log_level,
                    access_log=False,
                    server_header=False,
                    date_header=False,
                )
            )
        )
        with asyncio.Runner(loop_factory=uv.config.get_loop_factory()) as runner:
            side_sockets = sockets[1:] if sockets and len(sockets) > 1 else None
            runner.run(_together(uv, side, server, host, config.grpc_port, main, side_sockets))
    if server.failed:
        raise MlopsIacError(f"the server stopped: {server.failed}")


async def _together(
    main: Any,
    side: Any,
    server: Server,
    host: str,
    grpc_port: int | None,
    sockets: list[socket.socket] | None,
    side_sockets: list[socket.socket] | None,
) -> None:
    """The main listener with the metrics listener and the gRPC listener on one loop; the main
    one owns the signals and the lifespan, and the others stop with it. On SIGTERM, gRPC drains
    beside REST, and the models' batchers close only after both (`Server.drain_others`)."""
    listener = None
    if grpc_port is not None:
        from .grpc_server import start

        listener = await start(server, host, grpc_port)
        stopping: list[asyncio.Future[None]] = []  # one stop, whoever asks first

        def drain() -> asyncio.Future[None]:
            if not stopping:
                stopping.append(asyncio.ensure_future(listener.stop(DRAIN_SECONDS)))
            return stopping[0]

        main.before_shutdown = drain
        server.drain_others = drain
    metrics = asyncio.create_task(side.serve(sockets=side_sockets)) if side is not None else None
    try:
        await main.serve(sockets=sockets)
    finally:
        if listener is not None:
            await drain()
        if side is not None and metrics is not None:
            side.should_exit = True
            await metrics


def _main_server() -> type:
    import uvicorn

    class MainServer(uvicorn.Server):
        """uvicorn's server, telling the other listeners to drain when it starts to."""

        before_shutdown: Callable[[], object] | None = None

        async def shutdown(self, sockets: list[socket.socket] | None = None) -> None:
            if self.before_shutdown is not None:
                self.before_shutdown()
            await super().shutdown(sockets)

    return MainServer


def _quiet_server() -> type:
    import uvicorn

    class QuietServer(uvicorn.Server):
        """A uvicorn server that leaves SIGTERM and SIGINT to the main listener's."""

        @contextlib.contextmanager
        def capture_signals(self) -> Iterator[None]:
            yield

    return QuietServer
