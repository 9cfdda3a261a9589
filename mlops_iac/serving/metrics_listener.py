"""The metrics port: `GET /metrics` and the health routes, without the API key.

With `auth: key`, Prometheus cannot scrape the main port (it holds no inference key, and
should not). With `metrics_port` set, this second plain listener, on the same event loop and
over the same metrics, answers only what a scraper and a kubelet need; everything else is a
404, so the key still guards every model route. The main port keeps `/metrics` behind the key.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import orjson

from .protocol import ClientError
from .responses import PROMETHEUS_TEXT, Receive, Scope, Send, allow, respond

if TYPE_CHECKING:
    from .app import Server


class MetricsListener:
    def __init__(self, server: Server) -> None:
        self.server = server

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return  # no lifespan here: the main listener loads and unloads the models
        path, method = scope["path"], scope["method"]
        try:
            if path.startswith("/v2/health/"):
                await self.server.health(path, method, send)
            elif path != "/metrics":
                raise ClientError(
                    404, f"no route {path} on the metrics port: /metrics, /v2/health/live, /v2/health/ready"
                )
            else:
                allow(path, method, "GET")
                await respond(send, 200, self.server.metrics.render(), PROMETHEUS_TEXT)
        except ClientError as error:
            await respond(send, error.status, orjson.dumps({"error": error.message}), extra=error.headers)
