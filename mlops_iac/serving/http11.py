"""The HTTP/1.1 side of the server: uvicorn's httptools protocol, shortened for inference.

uvicorn (httptools' parser, its flow control, keep-alive and drain) stays the HTTP layer for
every request; what changes is the way from a parsed request to its answer:

- every answer leaves in one write (headers and body together);
- a `POST /v2/models/{name}[/versions/{v}]/infer` over HTTP/1.1 whose body fits in uvicorn's
  read buffer (64 KiB) is answered from the protocol's own callback once the body is
  complete (on the loop's next turn when other connections are open): parse, run inline,
  encode, write (`Server.infer_now`), without creating the ASGI task, its receive and send
  messages and events. On a small model that path is about a quarter of a request's CPU
  (benchmarks/request_path.py). Whatever is not the common case (a batcher that would merge
  it, an unknown model, a compressed or large body, 100-continue, a request pipelined behind
  one still running) goes the ASGI way as before, with its task started then; the HTTP
  parsing and limits are uvicorn's either way, and so are the slow-client timeouts and the
  connection cap of guard.py, which sit under both.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .app import Server
    from .inference import Answer


def protocol_class(server: Server | None = None) -> type:
    """uvicorn's httptools protocol, with guard.py's timeouts and cap (from the server's
    settings), and three changes:

    - HTTP/1.0 connections that ask for keep-alive are kept (uvicorn closes every HTTP/1.0
      connection; nginx speaks HTTP/1.0 to upstreams by default);
    - a response goes out in one write, headers and body together (`_one_write_cycle`):
      uvicorn writes the headers at `http.response.start` and the body after, two syscalls
      where one does, about a fifth of the CPU of a small model's request;
    - the common inference request is answered directly when its body is complete
      (`Server.infer_now`), without the ASGI task, its cycle's messages and events: the
      request's task is started only when the direct answer declines (see the module's note).
    """
    from uvicorn.protocols.http import httptools_impl as uv
    from uvicorn.protocols.http.flow_control import HIGH_WATER_LIMIT
    from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

    from .guard import guarded, limits_of

    cycle_class = _one_write_cycle()
    base = HttpToolsProtocol if server is None else guarded(HttpToolsProtocol, limits_of(server.config))

    class ServingProtocol(base):  # type: ignore[misc, valid-type]
        deferring = False  # inside on_headers_complete, for a request the server may answer directly
        deferred: Any = None  # (cycle, app) whose task waits for the whole body
        pending: Any = None  # (handle, deferred, body) of an answer waiting for the loop's turn

        def on_headers_complete(self) -> None:
            before = self.cycle
            self.deferring = server is not None and self._direct_candidate()
            try:
                super().on_headers_complete()
            finally:
                self.deferring = False
            if self.cycle is None or self.cycle is before:
                return  # an upgrade, or a request refused before it had a cycle
            if server is not None:
                server.arrived += 1  # read; its task starts later (see Batcher.waiting)
            # uvicorn names its cycle class inside on_headers_complete; the cycle's task has not
            # run yet, so its class can still change (a subclass with the same state).
            self.cycle.__class__ = cycle_class
            if self.parser.get_http_version() == "1.0" and self.parser.should_keep_alive():
                self.cycle.keep_alive = True

        def _direct_candidate(self) -> bool:
            """POST .../infer over HTTP/1.1, nothing asked of the cycle (100-continue, upgrade)."""
            return (
                self.url.startswith(b"/v2/models/")
                and self.url.endswith(b"/infer")  # no query string either
                and self.parser.get_method() == b"POST"
                and self.parser.get_http_version() == "1.1"
                and not self.expect_100_continue
                and not self.parser.should_upgrade()
                and not self.access_log
            )

        def _start_asgi_task(self, cycle: Any, app: Any) -> None:
            if self.deferring and app is self.app:  # not a pipelined one, nor the 503 of a limit
                self.deferred = (cycle, app)
                return
            super()._start_asgi_task(cycle, app)

        def on_body(self, body: bytes) -> None:
            super().on_body(body)
            if self.deferred is not None and len(self.cycle.body) > HIGH_WATER_LIMIT:
                self._undefer()  # a large body: the ASGI path reads it under flow control

        def on_message_complete(self) -> None:
            super().on_message_complete()
            deferred = self.deferred
            if deferred is None:
                return
            self.deferred = None
            # bytes: uvicorn gathers the body in a bytearray, whose slices would stay bytearrays
            # (BYTES elements) and views of a buffer it may reuse (binary tensors).
            body = bytes(deferred[0].body)
            if len(self.server_state.connections) == 1:
                self._answer(deferred, body)  # the only connection: nothing else to read first
                return
            # Answered on the loop's next turn rather than inside this read callback: a turn
            # then reads every connection that is ready before it answers any, as the ASGI
            # path's tasks do. Answering inside the callback cost 8-20% more CPU per request
            # at 8 and 32 connections, and deferring cost 2% at one (pinned, wrk). A request
            # pipelined behind this one meanwhile waits in uvicorn's pipeline (ASGI path).
            self.pending = (self.loop.call_soon(self._answer, deferred, body), deferred, body)

        def send_400_response(self, msg: str) -> None:
            """Bad bytes behind a whole request: the request's answer goes out first, then the
            400 that closes the connection (uvicorn would write the 400 before it)."""
            pending, self.pending = self.pending, None
            if pending is not None:
                pending[0].cancel()
                self._answer(pending[1], pending[2])
            super().send_400_response(msg)

        def _answer(self, deferred: Any, body: bytes) -> None:
            self.pending = None
            cycle = deferred[0]
            if cycle.disconnected or self.flow.write_paused or self.transport.is_closing():
                super()._start_asgi_task(*deferred)  # its ASGI cycle knows what to do
                return
            assert server is not None
            answer = server.infer_now(cycle.scope, body)
            if answer is None:
                super()._start_asgi_task(*deferred)
                return
            self._write_answer(cycle, answer)

        def _undefer(self) -> None:
            deferred, self.deferred = self.deferred, None
            super()._start_asgi_task(*deferred)

        def _write_answer(self, cycle: Any, answer: Answer) -> None:
            content = [
                uv.STATUS_LINE[answer.status],
                b"content-type: ",
                answer.content_type,
                b"\r\ncontent-length: ",
                str(len(answer.body)).encode(),
                b"\r\n",
            ]
            for name, value in (*self.server_state.default_headers, *answer.headers):
                content.extend((name, b": ", value, b"\r\n"))
            if not cycle.keep_alive:
                content.append(b"connection: close\r\n")
            content.extend((b"\r\n", answer.body))
            cycle.response_started = cycle.response_complete = True
            self.transport.write(b"".join(content))
            if not cycle.keep_alive:
                self.transport.close()
            self.on_response_complete()  # the keep-alive timer, reading resumed, the next pipelined one
            answer.after()

        def connection_lost(self, exc: Exception | None) -> None:
            # A request whose body will never be complete, and those pipelined behind an answer
            # (uvicorn starts them only once an answer went out), never start: nothing else
            # counts their arrivals off, and left counted, the batchers would never look quiet.
            never = (self.deferred is not None) + len(self.pipeline)
            if never and server is not None:
                server.arrived = max(0, server.arrived - never)
            self.deferred = None
            self.pipeline.clear()
            super().connection_lost(exc)

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
