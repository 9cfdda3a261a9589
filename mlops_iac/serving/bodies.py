"""Reading a request's body: bounded, and inflated when it comes compressed."""

from __future__ import annotations

import gzip
import zlib
from collections.abc import Awaitable, Callable
from typing import Any

from .protocol import ClientError

Receive = Callable[[], Awaitable[dict[str, Any]]]


class Disconnected(Exception):
    """The client went away before its body arrived."""


async def read_body(receive: Receive, declared: bytes | None, limit: int) -> bytes:
    """The whole request body; a declared or received size over `limit` is a 413."""
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise ClientError(413, f"the body is {int(declared)} bytes; the limit is {limit}")
    chunks, size = [], 0
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            raise Disconnected
        chunk = message.get("body", b"")
        size += len(chunk)
        if size > limit:
            raise ClientError(413, f"the body is over the limit of {limit} bytes")
        chunks.append(chunk)
        if not message.get("more_body"):
            return chunks[0] if len(chunks) == 1 else b"".join(chunks)


def decompress(body: bytes, encoding: str, limit: int) -> bytes:
    """A gzip or deflate body inflated, at most `limit` bytes of it (a bomb stops there)."""
    if encoding not in ("gzip", "deflate"):
        raise ClientError(415, f"Content-Encoding {encoding!r} is not supported; use gzip or deflate")
    inflater = zlib.decompressobj(wbits=31 if encoding == "gzip" else 15)
    try:
        out = inflater.decompress(body, limit + 1)  # a bomb stops at the limit
    except (zlib.error, gzip.BadGzipFile) as exc:
        raise ClientError(400, f"the {encoding} body is corrupt: {exc}") from None
    if len(out) > limit or inflater.unconsumed_tail:
        raise ClientError(413, f"the decompressed body is over the limit of {limit} bytes")
    return out
