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
from .http11 import protocol_class
from .metrics_listener import MetricsListener

# How long SIGTERM waits for requests in flight (Kubernetes gives 30 s by default).
DRAIN_SECONDS = 25


def bind(host: str, port: int, *, reuse_port: bool = False, join: bool = False) -> socket.socket:
    """The listening socket, bound before anything is announced; port 0 picks a free port.
    `reuse_port`: the first of several workers' sockets (SO_REUSEPORT); `join`: another
    worker's, on the port the first one holds.

    A port in use is the user's problem to fix, so it is one clear error, not a traceback
    after a "serving on ..." line that was never true.
    """
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    try:
        if reuse_port and not join:
            # With SO_REUSEPORT a second server of the same user binds a busy port without an
            # error, and the kernel splits connections between the two. A plain bind first
            # fails on any listener, so a forgotten `serve` is caught; it also resolves port 0.
            with socket.create_server((host, port), family=family) as probe:
                port = probe.getsockname()[1]
        return socket.create_server((host, port), family=family, backlog=2048, reuse_port=reuse_port or join)
    except OSError as exc:
        reason = os.strerror(exc.errno) if exc.errno else str(exc)
        raise MlopsIacError(
            f"cannot listen on {host}:{port}: {reason}; choose another port with --port (0 picks a free one)"
        ) from None


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
    sockets = [sock if sock is not None else bind(host, port, reuse_port=True)]
    if config.metrics_port is not None:
        sockets.append(bind(host, config.metrics_port))
    supervise(config, base, sockets, count, log_level)


def uvicorn_config(server: Server, host: str = "127.0.0.1", port: int = 0, log_level: str = "warning") -> Any:
    """uvicorn's settings for the main listener (also what benchmarks/request_path.py times)."""
    import uvicorn

    return uvicorn.Config(
        server,
        host=host,
        port=port,
        loop="uvloop",
        http=protocol_class(server),
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
    load_first: bool = False,
) -> None:
    """One server process; `sockets`: the main listener and, with a metrics port, its listener;
    `shared`: the folder where the workers' metrics meet, and this worker's number;
    `load_first`: load the models before listening (a worker replacing one that died)."""
    import uvicorn

    try:
        server = Server(config, base)
    except ValueError as exc:
        raise MlopsIacError(str(exc)) from None
    if shared is not None:
        server.metrics.share(*shared)
    server.counts_arrivals = True
    if load_first:
        try:
            server.load()
        except Exception as exc:
            raise MlopsIacError(f"the server stopped: {type(exc).__name__}: {exc}") from None
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
                    http=metrics_protocol(config),
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


def metrics_protocol(config: ServerConfig) -> type:
    """The metrics listener's protocol: httptools, with the main listener's timeouts and a small cap."""
    from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

    from .guard import METRICS_CONNECTIONS, guarded, limits_of

    return guarded(HttpToolsProtocol, limits_of(config, METRICS_CONNECTIONS))


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
