"""One write per response: the server's cycle writes the same bytes as uvicorn's own, in one
write. The transport here only records writes (it stands in for the socket); uvicorn's
unmodified cycle is the reference for every byte."""

from __future__ import annotations

import asyncio
import logging
from typing import Any

import pytest
from uvicorn.protocols.http.flow_control import FlowControl
from uvicorn.protocols.http.httptools_impl import RequestResponseCycle

from mlops_iac.serving.http11 import _one_write_cycle


class Recorder:
    def __init__(self) -> None:
        self.writes: list[bytes] = []
        self.closed = False

    def write(self, data: bytes) -> None:
        self.writes.append(data)

    def close(self) -> None:
        self.closed = True

    def is_closing(self) -> bool:
        return self.closed

    def pause_reading(self) -> None:
        pass

    def resume_reading(self) -> None:
        pass


def respond(cls: type, method: str, keep_alive: bool, messages: list[dict[str, Any]]) -> Recorder:
    async def run() -> Recorder:
        transport = Recorder()
        log = logging.getLogger("test")
        cycle = cls(
            scope={"method": method, "http_version": "1.1", "path": "/"},
            transport=transport,
            flow=FlowControl(transport),
            logger=log,
            access_logger=log,
            access_log=False,
            default_headers=[],
            message_event=asyncio.Event(),
            expect_100_continue=False,
            keep_alive=keep_alive,
            on_response=lambda: None,
        )
        for message in messages:
            await cycle.send(message)
        assert cycle.response_complete
        return transport

    return asyncio.run(run())


def start(status: int, *headers: tuple[bytes, bytes]) -> dict[str, Any]:
    return {"type": "http.response.start", "status": status, "headers": list(headers)}


def body(data: bytes, more: bool = False) -> dict[str, Any]:
    return {"type": "http.response.body", "body": data, "more_body": more}


JSON = (b"content-type", b"application/json")
CASES = {
    "keep-alive": ("POST", True, [start(200, JSON, (b"content-length", b"7")), body(b'{"a":1}')]),
    "close": ("POST", False, [start(400, JSON, (b"content-length", b"2")), body(b"{}")]),
    "405 with allow": ("PUT", True, [start(405, JSON, (b"content-length", b"2"), (b"allow", b"POST")), body(b"{}")]),
    "HTTP/1.0 keep-alive": (
        "GET",
        True,
        [start(200, (b"content-length", b"2"), (b"connection", b"keep-alive")), body(b"{}")],
    ),
    "HEAD": ("HEAD", True, [start(200, JSON, (b"content-length", b"2")), body(b"{}")]),
    "chunked": ("GET", True, [start(200, JSON), body(b"ab", more=True), body(b"cd")]),
}


@pytest.mark.parametrize("case", CASES)
def test_the_same_bytes_as_uvicorn_in_fewer_writes(case: str) -> None:
    method, keep_alive, messages = CASES[case]
    reference = respond(RequestResponseCycle, method, keep_alive, messages)
    ours = respond(_one_write_cycle(), method, keep_alive, messages)
    assert b"".join(ours.writes) == b"".join(reference.writes)
    assert ours.closed == reference.closed
    if case != "chunked":  # a streamed body goes out as it comes
        assert len(ours.writes) == 1 <= len(reference.writes)
    if case not in ("chunked", "HEAD"):  # uvicorn writes a HEAD answer (headers only) at once too
        assert len(reference.writes) == 2


def test_a_header_uvicorn_refuses_is_refused() -> None:
    bad = [start(200, (b"content-length", b"2"), (b"x-bad", b"a\r\nset-cookie: x")), body(b"{}")]
    with pytest.raises(RuntimeError, match="Invalid HTTP header value"):
        respond(_one_write_cycle(), "GET", True, bad)
