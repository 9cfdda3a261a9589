"""Data collection: a sample of requests and responses, as JSON lines, off the request path.

The request path only draws a random number and, when sampled, appends to a bounded queue;
a writer thread serialises and writes. A full queue drops the record and counts it: data
collection never blocks or fails a request.
"""

from __future__ import annotations

import queue
import random
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np
import orjson

from .config import CollectionConfig

Record = dict[str, Any]
_STOP = object()


class RotatingFile:
    """Appends lines to `path`; past `max_bytes` it rotates to path.1 ... path.N."""

    def __init__(self, path: Path, max_bytes: int, backups: int) -> None:
        self.path, self.max_bytes, self.backups = path, max_bytes, backups
        path.parent.mkdir(parents=True, exist_ok=True)
        self.handle: BinaryIO = open(path, "ab")  # noqa: SIM115 - kept open by design
        self.size = path.stat().st_size

    def write(self, line: bytes) -> None:
        if self.size + len(line) > self.max_bytes and self.size > 0:
            self.rotate()
        self.handle.write(line)
        self.size += len(line)

    def rotate(self) -> None:
        self.handle.close()
        for n in range(self.backups - 1, 0, -1):
            older = self.path.with_name(f"{self.path.name}.{n}")
            if older.exists():
                older.replace(self.path.with_name(f"{self.path.name}.{n + 1}"))
        if self.backups:
            self.path.replace(self.path.with_name(f"{self.path.name}.1"))
        else:
            self.path.unlink()
        self.handle = open(self.path, "ab")  # noqa: SIM115
        self.size = 0

    def flush(self) -> None:
        self.handle.flush()

    def close(self) -> None:
        self.handle.close()


class Collector:
    def __init__(
        self, config: CollectionConfig, base: Path, on_drop: Callable[[], None], sink: Any | None = None
    ) -> None:
        self.config = config
        self.rate = config.sample_rate if config.enabled else 0.0
        self.on_drop = on_drop
        self.queue: queue.Queue[Any] = queue.Queue(maxsize=config.queue_size)
        self.sink = sink or self._sink(base)
        self.thread = threading.Thread(target=self._write_loop, name="collector", daemon=True)
        self.written = 0
        if self.rate > 0:
            self.thread.start()

    def start(self) -> None:
        """Start the writer even at sample rate 0: shadow pairs are written whatever the rate."""
        if not self.thread.is_alive():
            self.thread.start()

    def _sink(self, base: Path) -> Any:
        if self.config.sink == "file":
            return RotatingFile(base / self.config.path, self.config.max_bytes, self.config.backups)
        if self.config.sink == "http":
            from .cloudevents import HttpSink

            assert self.config.url is not None
            return HttpSink(self.config.url, on_drop=self.on_drop)
        return _Stdout()

    def sampled(self) -> bool:
        return self.rate > 0 and (self.rate >= 1 or random.random() < self.rate)  # noqa: S311

    def offer(self, record: Record) -> None:
        try:
            self.queue.put_nowait(record)
        except queue.Full:
            self.on_drop()

    def _write_loop(self) -> None:
        while True:
            record = self.queue.get()
            if record is _STOP:
                self.sink.flush()
                return
            try:
                self.sink.write(
                    orjson.dumps(
                        record, option=orjson.OPT_SERIALIZE_NUMPY | orjson.OPT_APPEND_NEWLINE, default=_default
                    )
                )
                self.written += 1
            except Exception:  # a broken sink drops the record; it never reaches a request
                self.on_drop()
            if self.queue.empty():
                self.sink.flush()

    def close(self, timeout: float = 10.0) -> None:
        """Write what is queued, then stop (called on shutdown, after requests drained)."""
        if self.thread.is_alive():
            deadline = time.monotonic() + timeout
            while True:
                try:
                    self.queue.put(_STOP, timeout=0.1)
                    break
                except queue.Full:
                    if time.monotonic() > deadline:
                        return
            self.thread.join(timeout)
        close = getattr(self.sink, "close", None)
        if close:
            close()


def _default(value: Any) -> Any:
    if isinstance(value, bytes):
        return value.decode("utf-8", "replace")
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray):  # orjson writes numeric arrays itself, not strings (object)
        return value.tolist()
    raise TypeError


class _Stdout:
    def write(self, line: bytes) -> None:
        sys.stdout.buffer.write(line)

    def flush(self) -> None:
        sys.stdout.flush()
