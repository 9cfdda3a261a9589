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


def bind(host: str, port: int) -> socket.socket:
    """The listening socket, bound before anything is announced; port 0 picks a free port.

    A port in use is the user's problem to fix, so it is one clear error, not a traceback
    after a "serving on ..." line that was never true.
    """
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    try:
        return socket.create_server((host, port), family=family, backlog=2048)
    except OSError as exc:
        reason = os.strerror(exc.errno) if exc.errno else str(exc)
        raise MlopsIacError(f"cannot listen on {host}:{port}: {reason}; choose another "
                            "port with --port (0 picks a free one)") from None


def _protocol() -> type:
    """uvicorn's httptools protocol, keeping HTTP/1.0 connections that ask for keep-alive
    (uvicorn closes every HTTP/1.0 connection; nginx speaks HTTP/1.0 to upstreams by default)."""
    from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

    class KeepAlive10(HttpToolsProtocol):
        def on_headers_complete(self) -> None:
            super().on_headers_complete()
            if (self.cycle is not None and self.parser.get_http_version() == "1.0"
                    and self.parser.should_keep_alive()):
                self.cycle.keep_alive = True

    return KeepAlive10


def serve(config: ServerConfig, base: Path, host: str, port: int, *, log_level: str = "warning",
          sock: socket.socket | None = None) -> None:
    import uvicorn

    try:
        server = Server(config, base)
    except ValueError as exc:
        raise MlopsIacError(str(exc)) from None
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    uv = _main_server()(uvicorn.Config(
        server, host=host, port=port, loop="uvloop", http=_protocol(), lifespan="on",
        log_level=log_level, access_log=False, timeout_graceful_shutdown=DRAIN_SECONDS,
        server_header=False, date_header=False))
    server.on_fatal = lambda: setattr(uv, "should_exit", True)
    sockets = [sock] if sock is not None else None
    if config.metrics_port is None and config.grpc_port is None:
        uv.run(sockets=sockets)
    else:
        side = None if config.metrics_port is None else _quiet_server()(uvicorn.Config(
            MetricsListener(server), host=host, port=config.metrics_port, loop="uvloop", http="httptools",
            lifespan="off", log_level=log_level, access_log=False, server_header=False, date_header=False))
        with asyncio.Runner(loop_factory=uv.config.get_loop_factory()) as runner:
            runner.run(_together(uv, side, server, host, config.grpc_port, sockets))
    if server.failed:
        raise MlopsIacError(f"the server stopped: {server.failed}")


async def _together(main: Any, side: Any, server: Server, host: str, grpc_port: int | None,
                    sockets: list[socket.socket] | None) -> None:
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
    metrics = asyncio.create_task(side.serve()) if side is not None else None
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
