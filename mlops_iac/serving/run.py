"""Running the server under uvicorn, with uvloop and httptools, draining on SIGTERM."""

from __future__ import annotations

import logging
import os
import socket
from pathlib import Path

from ..errors import MlopsIacError
from .app import Server
from .config import ServerConfig

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


def serve(config: ServerConfig, base: Path, host: str, port: int, *, log_level: str = "warning",
          sock: socket.socket | None = None) -> None:
    import uvicorn

    try:
        server = Server(config, base)
    except ValueError as exc:
        raise MlopsIacError(str(exc)) from None
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    uv = uvicorn.Server(uvicorn.Config(
        server, host=host, port=port, loop="uvloop", http="httptools", lifespan="on",
        log_level=log_level, access_log=False, timeout_graceful_shutdown=DRAIN_SECONDS,
        server_header=False, date_header=False))
    server.on_fatal = lambda: setattr(uv, "should_exit", True)
    uv.run(sockets=[sock] if sock is not None else None)
    if server.failed:
        raise MlopsIacError(f"the server stopped: {server.failed}")
