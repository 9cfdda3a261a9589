"""Data collection off the request path: bounded, rotating, never blocking, drops counted."""

from __future__ import annotations

import http.server
import json
import threading
from pathlib import Path
from typing import Any, ClassVar

import numpy as np

from mlops_iac.serving.cloudevents import HttpSink
from mlops_iac.serving.collect import Collector, RotatingFile
from mlops_iac.serving.config import CollectionConfig


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
    drops: list[int] = []
    sink = SlowSink()
    collector = Collector(
        CollectionConfig(enabled=True, sample_rate=1.0, queue_size=5), tmp_path, lambda: drops.append(1), sink=sink
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
    assert len(kept) + len(drops) == 50
    assert kept[0] == {"i": 0, "x": [0.0, 1.0, 2.0]}


def test_sampling_rate(tmp_path: Path) -> None:
    off = Collector(CollectionConfig(enabled=False, sample_rate=1.0), tmp_path, lambda: None)
    assert not any(off.sampled() for _ in range(100))
    tenth = Collector(CollectionConfig(enabled=True, sample_rate=0.1), tmp_path, lambda: None)
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
