"""Data collection: a sample of requests and responses, as JSON lines, off the request path.

The request path only draws a random number and, when sampled, appends to a bounded queue;
a writer thread serialises and writes. Data collection never blocks or fails a request, and
every record offered is either written whole or counted as dropped, by reason:

- `full`: no room: the queue was full (the sink is slower than the traffic, or the writer is
  waiting for disk space), or the disk was still full at shutdown;
- `error`: anything else: a record that cannot be serialised, a write error other than no
  space (EIO, EROFS, ...), an HTTP sink that gave up. While the writer is failing with such an
  error, what overflows the queue counts as `error` too.

A write that fails is tried again with backoff (the records wait in the writer's hands, the
queue keeps taking new ones), so collection resumes by itself once space returns. A file gets
whole lines only: a failed write is cut back to the last whole line, and a file left with a
partial line (SIGKILL in a write) is cut back when the writer opens it.
"""

from __future__ import annotations

import contextlib
import errno
import os
import queue
import random
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import orjson

from .config import CollectionConfig

Record = dict[str, Any]
_STOP = object()
BATCH = 256  # records the writer takes off the queue at once (and holds while retrying)
FIRST_RETRY_S, LAST_RETRY_S = 0.05, 2.0  # backoff between tries of a failed write
NO_SPACE = (errno.ENOSPC, errno.EDQUOT)


def reason_of(exc: BaseException) -> str:
    """The `reason` label of a record lost to `exc`."""
    return "full" if isinstance(exc, OSError) and exc.errno in NO_SPACE else "error"


class RotatingFile:
    """Appends whole lines to `path`; past `max_bytes` it rotates to path.1 ... path.N.

    Unbuffered: a line that `write` returned from is in the file (the page cache: it survives
    the process, SIGKILL included), and a line it raised on left nothing behind."""

    def __init__(self, path: Path, max_bytes: int, backups: int) -> None:
        self.path, self.max_bytes, self.backups = path, max_bytes, backups
        path.parent.mkdir(parents=True, exist_ok=True)
        self.fd: int | None = None
        self.size = 0
        self._open()

    def _open(self) -> None:
        fd = os.open(self.path, os.O_RDWR | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o644)
        self.size = whole_lines(fd)
        self.fd = fd

    def write(self, line: bytes) -> None:
        if self.fd is None:  # a rotation that could not reopen the file: try again now
            self._open()
        if self.size + len(line) > self.max_bytes and self.size > 0:
            self.rotate()
        assert self.fd is not None
        try:
            view, done = memoryview(line), 0
            while done < len(line):  # a short write (the disk filling) goes on, or raises below
                done += os.write(self.fd, view[done:])
        except OSError:
            # Cut the part that made it: the next line must not continue a torn one.
            with contextlib.suppress(OSError):
                os.ftruncate(self.fd, self.size)
            raise
        self.size += len(line)

    def rotate(self) -> None:
        self.close()
        for n in range(self.backups - 1, 0, -1):
            older = self.path.with_name(f"{self.path.name}.{n}")
            if older.exists():
                older.replace(self.path.with_name(f"{self.path.name}.{n + 1}"))
        if self.backups:
            self.path.replace(self.path.with_name(f"{self.path.name}.1"))
        else:
            self.path.unlink()
        self._open()

    def flush(self) -> None:
        """Nothing is buffered here (`write` is one system call per line)."""

    def close(self) -> None:
        if self.fd is not None:
            fd, self.fd = self.fd, None
            os.close(fd)


def whole_lines(fd: int) -> int:
    """Cuts the file open at `fd` back to its last whole line (a writer killed mid-line left
    the rest) and returns its size."""
    size = os.fstat(fd).st_size
    end = size
    while end > 0:
        start = max(0, end - 65536)
        tail = os.pread(fd, end - start, start)
        newline = tail.rfind(b"\n")
        if newline >= 0:
            end = start + newline + 1
            break
        end = start
    if end != size:
        os.ftruncate(fd, end)
    return end


class Collector:
    def __init__(
        self, config: CollectionConfig, base: Path, on_drop: Callable[[str], None], sink: Any | None = None
    ) -> None:
        """`on_drop(reason)` counts one record lost (`full` or `error`, see the module)."""
        self.config = config
        self.rate = config.sample_rate if config.enabled else 0.0
        self.on_drop = on_drop
        self.queue: queue.Queue[Any] = queue.Queue(maxsize=config.queue_size)
        self.stopping = threading.Event()
        self.failing: str | None = None  # the reason of the write failure being retried, if any
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
            return HttpSink(self.config.url, on_drop=lambda: self.on_drop("error"))
        return _Stdout()

    def sampled(self) -> bool:
        return self.rate > 0 and (self.rate >= 1 or random.random() < self.rate)  # noqa: S311

    def offer(self, record: Record) -> None:
        try:
            self.queue.put_nowait(record)
        except queue.Full:
            self.on_drop(self.failing or "full")

    def _write_loop(self) -> None:
        lines: list[bytes] = []
        delay = FIRST_RETRY_S
        stop = False
        while True:
            stop = self._take(lines) or stop
            failure = self._write(lines)
            if failure is None:
                self.failing, delay = None, FIRST_RETRY_S
            elif stop or self.stopping.is_set():
                self._give_up(lines, failure)
                return
            else:  # keep the lines and try again later; the queue takes new records meanwhile
                self.failing = failure
                self.stopping.wait(delay)
                delay = min(delay * 2, LAST_RETRY_S)
            if stop and not lines:
                return

    def _take(self, lines: list[bytes]) -> bool:
        """Serialises queued records into `lines` (waiting for one when there is nothing to
        write); True once the stop mark was taken."""
        while len(lines) < BATCH:
            try:
                record = self.queue.get_nowait() if lines else self.queue.get()
            except queue.Empty:
                return False
            if record is _STOP:
                return True
            try:
                lines.append(orjson.dumps(record, option=_OPTIONS, default=_default))
            except orjson.JSONEncodeError:  # a value orjson cannot write: this record only
                self.on_drop("error")
        return False

    def _write(self, lines: list[bytes]) -> str | None:
        """Writes `lines` from the front, removing each one written; the drop reason of the
        failure that stopped it, or None."""
        try:
            while lines:
                self.sink.write(lines[0])
                del lines[0]
                self.written += 1
            self.sink.flush()
        except Exception as exc:  # a broken sink drops records; it never reaches a request
            return reason_of(exc)
        return None

    def _give_up(self, lines: list[bytes], reason: str) -> None:
        """Stopping while the sink still fails: what is held and queued is counted as lost."""
        for _ in lines:
            self.on_drop(reason)
        lines.clear()
        while True:
            try:
                record = self.queue.get_nowait()
            except queue.Empty:
                return
            if record is not _STOP:
                self.on_drop(reason)

    def close(self, timeout: float = 10.0) -> None:
        """Write what is queued, then stop (called on shutdown, after requests drained). A sink
        that still fails gets one more try, whatever the backoff, then its records are dropped."""
        self.stopping.set()
        if self.thread.is_alive():
            deadline = time.monotonic() + timeout
            while self.thread.is_alive() and time.monotonic() < deadline:
                try:
                    self.queue.put(_STOP, timeout=0.1)
                    break
                except queue.Full:  # the writer sees `stopping` once its current write is done
                    continue
            self.thread.join(max(0.0, deadline - time.monotonic()))
        close = getattr(self.sink, "close", None)
        if close:
            with contextlib.suppress(OSError):  # nothing is left to write: a full disk cannot fail it
                close()


_OPTIONS = orjson.OPT_SERIALIZE_NUMPY | orjson.OPT_APPEND_NEWLINE


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
