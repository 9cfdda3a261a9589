"""A data-collection sink that sends CloudEvents over HTTP (the KServe logger convention).

Records are batched (structured batch mode, `application/cloudevents-batch+json`) and sent
from the collector's writer thread with bounded retries; a batch that still fails is
dropped and counted. Nothing here runs on the request path.
"""

from __future__ import annotations

import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Callable

EVENT_TYPE = "dev.mlops-iac.inference.record"


class HttpSink:
    def __init__(
        self,
        url: str,
        on_drop: Callable[[], None],
        *,
        batch: int = 100,
        retries: int = 3,
        timeout_s: float = 2.0,
        source: str = "mlops-iac",
    ) -> None:
        self.url, self.on_drop = url, on_drop
        self.batch, self.retries, self.timeout = batch, retries, timeout_s
        self.source = source
        self.buffer: list[bytes] = []
        self.sent = 0

    def write(self, line: bytes) -> None:
        self.buffer.append(line.rstrip(b"\n"))
        if len(self.buffer) >= self.batch:
            self.flush()

    def _event(self, data: bytes) -> bytes:
        head = (
            f'{{"specversion":"1.0","id":"{uuid.uuid4()}","source":"{self.source}",'
            f'"type":"{EVENT_TYPE}","datacontenttype":"application/json","data":'
        )
        return head.encode() + data + b"}"

    def flush(self) -> None:
        if not self.buffer:
            return
        records, self.buffer = self.buffer, []
        body = b"[" + b",".join(self._event(r) for r in records) + b"]"
        # The URL's scheme is http(s), checked by the spec's pattern (monitoring...sink.url).
        headers = {"Content-Type": "application/cloudevents-batch+json"}
        request = urllib.request.Request(self.url, data=body, method="POST", headers=headers)  # noqa: S310
        for attempt in range(self.retries):
            try:
                with urllib.request.urlopen(request, timeout=self.timeout) as response:  # noqa: S310
                    if 200 <= response.status < 300:
                        self.sent += len(records)
                        return
            except (urllib.error.URLError, OSError, ValueError):
                pass
            time.sleep(min(0.1 * 2**attempt, 1.0))
        for _ in records:
            self.on_drop()

    def close(self) -> None:
        self.flush()
