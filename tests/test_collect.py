"""Data collection off the request path: bounded, rotating, never blocking, drops counted."""

from __future__ import annotations

import errno
import http.server
import json
import os
import signal
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
from prometheus_client.parser import text_string_to_metric_families

from mlops_iac.serving.cloudevents import HttpSink
from mlops_iac.serving.collect import Collector, RotatingFile
from mlops_iac.serving.config import CollectionConfig

from .faults import fill, small_disk
from .server_fixtures import Running, build_models, model_entry, running_server


class SlowSink:
    def __init__(self) -> None:
        self.lines: list[bytes] = []
        self.release = threading.Event()

    def write(self, line: bytes) -> None:
        self.release.wait(10)
        self.lines.append(line)

    def flush(self) -> None:
        pass


def test_a_full_queue_drops_and_counts_without_blocking(tmp_path: Path) -> None:
    drops: list[str] = []
    sink = SlowSink()
    collector = Collector(
        CollectionConfig(enabled=True, sample_rate=1.0, queue_size=5), tmp_path, drops.append, sink=sink
    )
    for i in range(50):
        collector.offer({"i": i, "x": np.arange(3, dtype=np.float32)})
    # Every offer returned while the sink was still stuck (it has written nothing): a stuck sink
    # never holds a request. No clock: a blocking offer would have waited for the release.
    assert sink.lines == [] and not sink.release.is_set()
    assert 40 <= len(drops) <= 45  # the queue (5) and the one in the writer's hands were kept
    sink.release.set()
    collector.close()
    kept = [json.loads(line) for line in sink.lines]
    assert len(kept) + len(drops) == 50 and set(drops) == {"full"}
    assert kept[0] == {"i": 0, "x": [0.0, 1.0, 2.0]}


def test_sampling_rate(tmp_path: Path) -> None:
    off = Collector(CollectionConfig(enabled=False, sample_rate=1.0), tmp_path, lambda reason: None)
    assert not any(off.sampled() for _ in range(100))
    tenth = Collector(CollectionConfig(enabled=True, sample_rate=0.1), tmp_path, lambda reason: None)
    hits = sum(tenth.sampled() for _ in range(20_000))
    assert 1_600 < hits < 2_400
    tenth.close()


def test_rotation_keeps_backups(tmp_path: Path) -> None:
    sink = RotatingFile(tmp_path / "r.jsonl", max_bytes=100, backups=2)
    for i in range(30):
        sink.write(json.dumps({"n": i, "pad": "x" * 10}).encode() + b"\n")
    sink.close()
    files = sorted(p.name for p in tmp_path.iterdir())
    assert files == ["r.jsonl", "r.jsonl.1", "r.jsonl.2"]
    assert all(p.stat().st_size <= 100 for p in tmp_path.iterdir())
    last = (tmp_path / "r.jsonl").read_text().splitlines()[-1]
    assert json.loads(last)["n"] == 29


class Receiver(http.server.BaseHTTPRequestHandler):
    bodies: ClassVar[list[Any]] = []
    fail_first = 0

    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers["Content-Length"]))
        if Receiver.fail_first > 0:
            Receiver.fail_first -= 1
            self.send_response(503)
            self.end_headers()
            return
        Receiver.bodies.append((self.headers["Content-Type"], json.loads(body)))
        self.send_response(202)
        self.end_headers()

    def log_message(self, *args: Any) -> None:
        pass


def test_cloudevents_http_sink_batches_retries_and_drops() -> None:
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Receiver)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    url = f"http://127.0.0.1:{server.server_address[1]}/events"
    drops: list[int] = []
    Receiver.fail_first = 1  # the first try fails, the retry lands
    sink = HttpSink(url, lambda: drops.append(1), batch=3, retries=3, source="test")
    for i in range(4):
        sink.write(json.dumps({"i": i}).encode() + b"\n")
    sink.close()
    assert [len(events) for _, events in Receiver.bodies] == [3, 1]
    content_type, events = Receiver.bodies[0]
    assert content_type == "application/cloudevents-batch+json"
    assert events[0]["specversion"] == "1.0" and events[0]["source"] == "test"
    assert [e["data"]["i"] for e in events] == [0, 1, 2] and not drops
    server.shutdown()
    dead = HttpSink(url, lambda: drops.append(1), batch=2, retries=2, timeout_s=0.2)
    dead.write(b'{"i": 9}\n')
    dead.write(b'{"i": 10}\n')
    assert len(drops) == 2  # the receiver is gone: both records dropped and counted


# --- faults: a full disk, a write error, a writer killed mid-line ---------------------------


def poll_until(condition: Callable[[], bool], what: str, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, what
        time.sleep(0.02)


def whole_json_lines(path: Path) -> list[Any]:
    """Every line of `path`, each one whole JSON (a torn line fails here)."""
    data = path.read_bytes()
    assert data == b"" or data.endswith(b"\n"), data[-80:]
    return [json.loads(line) for line in data.splitlines()]


def test_a_full_disk_drops_whole_records_counted_and_collection_resumes(tmp_path: Path) -> None:
    """The disk fills mid-stream (a write torn at the disk's last byte included): every record
    offered is a whole line in the file or counted as dropped `full`; once space is freed the
    writer writes again by itself, and it stops at once, the disk full again."""
    with small_disk(tmp_path / "disk") as disk:
        drops: list[str] = []
        config = CollectionConfig(enabled=True, sample_rate=1.0, sink="file", path="r.jsonl", queue_size=100)
        collector = Collector(config, disk, drops.append)
        pad = "x" * 300
        sent = 0

        def offer(n: int) -> None:
            nonlocal sent
            for _ in range(n):
                collector.offer({"i": sent, "pad": pad})
                sent += 1

        offer(10)
        poll_until(lambda: collector.written == 10, "the first records are written")
        filler = fill(disk)
        offer(1000)  # some fit in the file's last page, one is torn at the disk's end, then none fit
        poll_until(lambda: len(drops) > 0 and collector.failing == "full", "the writer reports a full disk")
        assert set(drops) == {"full"} and collector.thread.is_alive()
        assert len(whole_json_lines(disk / "r.jsonl")) == collector.written < sent
        filler.unlink()  # space returns: what the writer held and what is queued get written
        poll_until(
            lambda: collector.written + len(drops) == sent, "the held records are written after the space returns"
        )
        lost = len(drops)
        offer(50)
        poll_until(lambda: collector.written + len(drops) == sent, "new records are written again")
        assert collector.failing is None and len(drops) == lost  # with room, nothing more is lost
        fill(disk)
        offer(30)  # then shutdown with the disk full: the held records are counted, nothing hangs
        collector.close()
        assert not collector.thread.is_alive()
        records = whole_json_lines(disk / "r.jsonl")
        assert len(records) == collector.written and collector.written + len(drops) == sent
        assert set(drops) == {"full"}
        numbers = [r["i"] for r in records]
        assert numbers == sorted(set(numbers)) and numbers[:10] == list(range(10))  # each once, in order


class FailingSink:
    """A sink whose writes fail with `errno` until `healed` is set."""

    def __init__(self, code: int) -> None:
        self.code, self.healed, self.lines = code, threading.Event(), list[bytes]()

    def write(self, line: bytes) -> None:
        if not self.healed.is_set():
            raise OSError(self.code, os.strerror(self.code))
        self.lines.append(line)

    def flush(self) -> None:
        pass


def test_write_errors_are_retried_then_counted_as_error_at_shutdown(tmp_path: Path) -> None:
    drops: list[str] = []
    sink = FailingSink(errno.EIO)
    config = CollectionConfig(enabled=True, sample_rate=1.0, queue_size=10)
    collector = Collector(config, tmp_path, drops.append, sink=sink)
    for i in range(5):
        collector.offer({"i": i})
    poll_until(lambda: collector.failing == "error", "the writer reports the failing sink")
    sink.healed.set()  # the writer was retrying, not gone
    poll_until(lambda: len(sink.lines) == 5, "the held records are written once the sink works")
    sink.healed.clear()
    collector.offer({"i": 5})
    poll_until(lambda: collector.failing == "error", "the writer fails again")
    for i in range(6, 30):  # more than the queue holds: what overflows while failing is `error`
        collector.offer({"i": i})
    collector.close()
    assert [json.loads(line)["i"] for line in sink.lines] == list(range(5))
    assert drops == ["error"] * 25


def test_a_partial_last_line_is_cut_when_the_writer_opens_the_file(tmp_path: Path) -> None:
    """A writer killed mid-line (SIGKILL, power loss) left a torn line: the next one cuts it, so
    every line a reader sees is whole JSON."""
    path = tmp_path / "r.jsonl"
    path.write_bytes(b'{"i": 0}\n{"i": 1}\n{"i": 2, "x": [1.0, 2.')
    sink = RotatingFile(path, max_bytes=1 << 20, backups=1)
    sink.write(b'{"i": 3}\n')
    sink.close()
    assert whole_json_lines(path) == [{"i": 0}, {"i": 1}, {"i": 3}]
    path.write_bytes(b'{"torn, and nothing whole before it')
    RotatingFile(path, max_bytes=1 << 20, backups=1).close()
    assert path.read_bytes() == b""


def test_a_value_json_cannot_write_drops_that_record_as_error(tmp_path: Path) -> None:
    drops: list[str] = []
    sink = SlowSink()
    sink.release.set()
    collector = Collector(CollectionConfig(enabled=True, sample_rate=1.0), tmp_path, drops.append, sink=sink)
    collector.offer({"i": 0, "bad": object()})
    collector.offer({"i": 1})
    collector.close()
    assert drops == ["error"] and [json.loads(line) for line in sink.lines] == [{"i": 1}]


def dropped(server: Running) -> dict[str, float]:
    families = text_string_to_metric_families(server.request("GET", "/metrics")[2].decode())
    return {
        s.labels["reason"]: s.value
        for family in families
        if family.name == "mlops_collection_dropped"
        for s in family.samples
        if s.name.endswith("_total")
    }


def test_a_server_collecting_to_a_full_disk_answers_counts_resumes_and_stops_cleanly(tmp_path: Path) -> None:
    """The real server, collecting every request to a disk that fills: requests are answered
    all along; each one is a whole line in the file or counted in
    mlops_collection_dropped_total{reason="full"}; freed space is written to again; SIGTERM
    with the disk full again stops the server without a traceback."""
    models = build_models(tmp_path / "models")
    with small_disk(tmp_path / "disk") as disk:
        path = disk / "r.jsonl"
        collection = {"enabled": True, "sample_rate": 1.0, "sink": "file", "path": str(path), "queue_size": 50}
        config = {"models": [model_entry(models, "iris")], "collection": collection}
        with running_server(models, config) as server:
            body = {"inputs": [{"name": "input", "datatype": "FP32", "shape": [1, 4], "data": [5.1, 3.5, 1.4, 0.2]}]}
            sent = 0

            def infer(n: int) -> None:
                nonlocal sent
                for _ in range(n):
                    assert server.json("POST", "/v2/models/iris/infer", body)[0] == 200
                    sent += 1

            def accounted() -> bool:
                return len(whole_json_lines(path)) + sum(dropped(server).values()) == sent

            assert dropped(server) == {"full": 0, "error": 0}
            infer(5)
            poll_until(accounted, "the first records are written")
            filler = fill(disk)
            infer(300)
            poll_until(lambda: dropped(server)["full"] > 0, "records are dropped as full")
            written = len(whole_json_lines(path))
            filler.unlink()
            poll_until(accounted, "every record is written or counted once space returns")
            infer(20)
            poll_until(accounted, "new records are written")
            assert len(whole_json_lines(path)) >= written + 20 and dropped(server)["error"] == 0
            fill(disk)
            infer(20)
            server.process.send_signal(signal.SIGTERM)
            assert server.process.wait(30) in (0, -signal.SIGTERM)  # uvicorn re-raises SIGTERM
        log = server.log.read_text()
        assert "Traceback" not in log and "Error" not in log, log
        whole_json_lines(path)
