"""Running the server under uvicorn, with uvloop and httptools, draining on SIGTERM."""

from __future__ import annotations

import logging
from pathlib import Path

from ..errors import MlopsIacError
from .app import Server
from .config import ServerConfig

# How long SIGTERM waits for requests in flight (Kubernetes gives 30 s by default).
DRAIN_SECONDS = 25


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


def serve(config: ServerConfig, base: Path, host: str, port: int, *, log_level: str = "warning") -> None:
    import uvicorn

    try:
        server = Server(config, base)
    except ValueError as exc:
        raise MlopsIacError(str(exc)) from None
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    uv = uvicorn.Server(uvicorn.Config(
        server, host=host, port=port, loop="uvloop", http=_protocol(), lifespan="on",
        log_level=log_level, access_log=False, timeout_graceful_shutdown=DRAIN_SECONDS,
        server_header=False, date_header=False))
    server.on_fatal = lambda: setattr(uv, "should_exit", True)
    uv.run()
    if server.failed:
        raise MlopsIacError(f"the server stopped: {server.failed}")
