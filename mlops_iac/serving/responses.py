"""ASGI plumbing the server's listeners share: the types, the one way to answer, method checks.

Apart from `app.py` so that the metrics listener answers the same way without importing the
server, and `app.py` keeps to routing and inference.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

from .protocol import ClientError

Scope = dict[str, Any]
Receive = Callable[[], Awaitable[dict[str, Any]]]
Send = Callable[[dict[str, Any]], Awaitable[None]]
JSON = b"application/json"
PROMETHEUS_TEXT = b"text/plain; version=0.0.4"


async def respond(
    send: Send, status: int, body: bytes, content_type: bytes = JSON, extra: list[tuple[bytes, bytes]] | None = None
) -> None:
    """A whole answer with its content-length: the runner's protocol writes it in one write."""
    headers = [(b"content-type", content_type), (b"content-length", str(len(body)).encode())]
    if extra:
        headers.extend(extra)
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})


def allow(path: str, method: str, allowed: str) -> None:
    """A 405 naming the method the path takes (with its Allow header) for any other."""
    if method != allowed:
        raise ClientError(405, f"{path} takes {allowed}", [(b"allow", allowed.encode())])


def keep_alive_10(scope: Scope, send: Send) -> Send:
    """HTTP/1.0 keeps a connection only when asked, and only when the answer says so."""
    if not any(k == b"connection" and b"keep-alive" in v.lower() for k, v in scope["headers"]):
        return send

    async def keeping(message: dict[str, Any]) -> None:
        if message["type"] == "http.response.start":
            message = {**message, "headers": [*message["headers"], (b"connection", b"keep-alive")]}
        await send(message)

    return keeping
