"""Slow and surplus clients: what keeps a listener's connections from being held hostage.

uvicorn's HTTP/1.1 protocols arm their keep-alive timer only after an answer, and the first
byte of a request cancels it: a connection that sends nothing, half a request head, or less
body than its Content-Length stays open forever, and enough of them take every open file of
the process. Here every connection of a listener gets

- a header timeout: the whole request head within `header_timeout` seconds of the
  connection's opening or of the end of its previous answer (a deadline, not an idle time:
  a head sent a byte at a time does not keep it open);
- a body timeout: no more than `body_timeout` seconds without a byte of a body still owed
  (while the server itself has paused reading, the clock starts again);
- a cap on open connections: one more is answered 503 and closed at once, so the files a
  process may open are never all taken by connections (the server's models, logs and
  sockets to shadows keep a reserve).

A timed-out connection is closed, with a 408 first when part of a request came and nothing
of an answer was written. One timer per connection, re-armed only when it fires: a request
costs a few attribute writes, not a timer.
"""

from __future__ import annotations

import resource
from dataclasses import dataclass
from typing import Any

from .config import ServerConfig

# Files kept for everything but REST connections: the models, logs, the metrics and gRPC
# listeners with their connections, the sockets to shadows and collectors. At most a quarter
# of a small limit.
RESERVE = 256
# The metrics listener serves scrapes: a few connections at a time.
METRICS_CONNECTIONS = 64

_BUSY = b'{"error":"too many open connections; try again"}'
_TIMEOUT = b'{"error":"the request did not arrive in time"}'


def _closing_answer(status: bytes, body: bytes, *extra: bytes) -> bytes:
    head = [b"HTTP/1.1 ", status, b"\r\ncontent-type: application/json\r\n", *extra]
    head.append(b"content-length: %d\r\nconnection: close\r\n\r\n" % len(body))
    return b"".join(head) + body


BUSY = _closing_answer(b"503 Service Unavailable", _BUSY, b"retry-after: 1\r\n")
TIMED_OUT = _closing_answer(b"408 Request Timeout", _TIMEOUT)


@dataclass(frozen=True)
class Limits:
    header_timeout: float
    body_timeout: float
    max_connections: int


def default_max_connections() -> int:
    """The open-file limit (soft: what this process may open) less the reserve."""
    soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft == resource.RLIM_INFINITY or soft > 1_000_000:
        soft = 1_000_000
    return max(1, soft - min(RESERVE, soft // 4))


def limits_of(config: ServerConfig, max_connections: int | None = None) -> Limits:
    """The main listener's limits from the settings; `max_connections` overrides (metrics)."""
    cap = max_connections or config.max_connections or default_max_connections()
    return Limits(config.header_timeout_s, config.body_timeout_s, cap)


def guarded(base: type, limits: Limits) -> type:
    """`base` (uvicorn's httptools protocol or a subclass) with the limits above."""
    header, body = limits.header_timeout, limits.body_timeout
    recheck = min(header, body)

    class Guarded(base):  # type: ignore[misc]
        head_since: float | None = None  # waiting for a request head since (loop time)
        body_since: float | None = None  # waiting for more of a body since
        head_begun = False  # part of the awaited head has come
        guard: Any = None  # the connection's one timer
        refused = False

        def connection_made(self, transport: Any) -> None:
            if len(self.server_state.connections) >= limits.max_connections:
                # Refused before anything is read: waiting for a request would hold the very
                # file the cap is there to keep.
                self.refused, self.transport = True, transport
                transport.write(BUSY)
                transport.close()
                return
            super().connection_made(transport)
            self.head_since = self.loop.time()
            self.guard = self.loop.call_later(header, self._check)

        def connection_lost(self, exc: Exception | None) -> None:
            if self.refused:
                return
            if self.guard is not None:
                self.guard.cancel()
                self.guard = None
            super().connection_lost(exc)

        def handle_websocket_upgrade(self) -> None:
            if self.guard is not None:  # the connection is another protocol's from here
                self.guard.cancel()
                self.guard = None
            super().handle_websocket_upgrade()

        def on_message_begin(self) -> None:
            self.head_begun = True
            super().on_message_begin()

        def on_headers_complete(self) -> None:
            self.head_since, self.head_begun = None, False
            self.body_since = self.loop.time()  # cleared at once when there is no body
            super().on_headers_complete()

        def on_body(self, data: bytes) -> None:
            self.body_since = self.loop.time()
            super().on_body(data)

        def on_message_complete(self) -> None:
            self.body_since = None
            if self.cycle is not None and self.cycle.response_complete and self.head_since is None:
                self.head_since = self.loop.time()  # answered before its body had all come
            super().on_message_complete()

        def on_response_complete(self) -> None:
            # Waiting for the next head, unless a pipelined one is next or a body is still owed
            # (then from the end of that body).
            if not self.pipeline and self.body_since is None:
                self.head_since = self.loop.time()
            super().on_response_complete()

        def _check(self) -> None:
            self.guard = None
            if self.transport.is_closing():
                return
            now, due = self.loop.time(), None
            if self.head_since is not None:
                due = self.head_since + header
            elif self.body_since is not None:
                if self.flow.read_paused:  # the server's own back-pressure, not the client's stall
                    self.body_since = now
                due = self.body_since + body
            if due is not None and now >= due:
                self._expire()
                return
            self.guard = self.loop.call_at(due if due is not None else now + recheck, self._check)

        def _expire(self) -> None:
            cycle = self.cycle
            if self.head_since is not None:
                partial = self.head_begun and (cycle is None or cycle.response_complete)
            else:
                partial = cycle is not None and not cycle.response_started
            if partial:
                self.transport.write(TIMED_OUT)
            self.transport.close()

    return Guarded
