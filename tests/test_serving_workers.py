"""Worker processes (every core), metrics added up across them, drain across them; and the
batcher's inline path (a lone request runs on the event loop, without the thread hop)."""

from __future__ import annotations

import asyncio
import contextlib
import json
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from prometheus_client.parser import text_string_to_metric_families

from mlops_iac.convert.onnx_tools import run, session
from mlops_iac.serving.batching import Batcher
from mlops_iac.serving.metrics import Metrics
from mlops_iac.serving.workers import cpu_limit, worker_count

from .conftest import free_port
from .server_fixtures import Models, Running, build_models, model_entry, running_server

TWO_CPUS = cpu_limit() >= 2


@pytest.fixture(scope="module")
def models(tmp_path_factory: pytest.TempPathFactory) -> Models:
    return build_models(tmp_path_factory.mktemp("models"))


def infer_body(x: np.ndarray) -> dict[str, object]:
    return {"inputs": [{"name": "input", "datatype": "FP32", "shape": list(x.shape), "data": x.ravel().tolist()}]}


def worker_pids(server: Running) -> list[int]:
    """The supervisor's children that serve (multiprocessing's resource tracker left out)."""
    found = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
            command = (stat.parent / "cmdline").read_bytes()
        except OSError:
            continue
        if int(fields[1]) == server.process.pid and b"spawn_main" in command:
            found.append(int(stat.parent.name))
    return found


@pytest.fixture(scope="module")
def two_workers(models: Models) -> Iterator[Running]:
    if not TWO_CPUS:
        pytest.skip("one CPU here: the server caps its workers at the CPUs it may use")
    config = {"models": [model_entry(models, "iris")], "workers": 2}
    with running_server(models, config) as server:
        every_worker_ready(server)
        yield server


def every_worker_ready(server: Running) -> None:
    """Each worker loads on its own; /metrics says when every worker is ready."""
    deadline = time.monotonic() + 60
    while True:
        assert time.monotonic() < deadline, server.log.read_text()
        values = samples(server.request("GET", "/metrics")[2])
        if values.get(("mlops_workers", ())) == 2 and values.get(("mlops_ready", ())) == 1:
            return
        time.sleep(0.2)


def samples(text: bytes) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text.decode())
        for s in family.samples
    }


def test_worker_count_follows_the_settings_within_the_cpus() -> None:
    assert worker_count(1) == 1
    assert worker_count(0) == cpu_limit()  # 0: one per CPU
    assert worker_count(10_000) == cpu_limit()  # never more workers than CPUs


def test_two_workers_answer_right_and_metrics_add_up(two_workers: Running, models: Models) -> None:
    assert len(worker_pids(two_workers)) == 2
    local = session((models.folder / "iris.onnx").read_bytes())
    for i in range(40):  # a new connection each: the kernel hands them to either worker
        status, doc = two_workers.json("POST", "/v2/models/iris/infer", infer_body(models.iris[i : i + 1]))
        assert status == 200, doc
        label, proba = run(local, models.iris[i : i + 1])
        assert doc["outputs"][0]["data"] == label.tolist()
        np.testing.assert_array_equal(np.asarray(doc["outputs"][1]["data"], np.float32), proba.ravel())
    time.sleep(1.5)  # each worker publishes its metrics every second
    for _ in range(6):  # whichever worker answers /metrics counts every worker's requests
        _, _, text = two_workers.request("GET", "/metrics")
        values = samples(text)
        assert values[("mlops_workers", ())] == 2
        labels = (("model", "iris"), ("version", "1"))
        assert values[("mlops_requests_total", (*labels[:1], ("status", "200"), labels[1]))] == 40
        assert values[("mlops_request_seconds_count", labels)] == 40
        assert values[("mlops_ready", ())] == 1


def test_sigterm_drains_every_worker(models: Models, tmp_path: Path) -> None:
    if not TWO_CPUS:
        pytest.skip("one CPU here: the server caps its workers at the CPUs it may use")
    # The handler leaves a mark (its worker's pid) when a request starts, then takes its time.
    (models.folder / "slow.py").write_text(
        "import os, pathlib, time\n"
        "def preprocess(request):\n"
        f"    pathlib.Path({str(tmp_path)!r}, f'{{os.getpid()}}-{{time.monotonic_ns()}}').touch()\n"
        "    time.sleep(2)  # a slow request, in flight when SIGTERM arrives\n"
        "    return dict(request.inputs)\n"
    )
    config = {"models": [model_entry(models, "iris", handler="slow.py")], "workers": 2}
    with running_server(models, config) as server:
        every_worker_ready(server)
        results: list[int] = []

        def call() -> None:
            # OSError: sent to a worker whose loop was busy, never read, and closed at shutdown.
            with contextlib.suppress(OSError):
                results.append(server.json("POST", "/v2/models/iris/infer", infer_body(models.iris[:1]))[0])

        calls: list[threading.Thread] = []
        deadline = time.monotonic() + 30
        while len({mark.name.split("-")[0] for mark in tmp_path.iterdir()}) < 2:  # both workers busy
            assert time.monotonic() < deadline and len(calls) < 20
            calls.append(threading.Thread(target=call))
            calls[-1].start()
            time.sleep(0.2)
        server.process.send_signal(signal.SIGTERM)
        for thread in calls:
            thread.join(30)
        started = len(list(tmp_path.iterdir()))
        assert results == [200] * started  # every request a worker had started finished
        assert server.process.wait(30) == 0
        assert worker_pids(server) == []


def test_a_worker_that_cannot_load_stops_the_server(models: Models) -> None:
    entry = model_entry(models, "iris")
    entry["digest"] = "sha256:" + "0" * 64
    settings = models.folder / "tampered-workers.json"
    settings.write_text(json.dumps({"models": [entry], "workers": 2}))
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "mlops_iac.serving",
            "--config",
            str(settings),
            "--host",
            "127.0.0.1",
            "--port",
            str(free_port()),
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 1
    assert "does not match its pinned digest" in done.stderr


def test_metrics_of_workers_add_up(tmp_path: Path) -> None:
    workers = [Metrics(), Metrics()]
    for index, metrics in enumerate(workers):
        metrics.share(tmp_path, index)
        metrics.requests.labels("m", "1", "200").inc(3 + index)
        metrics.latency.labels("m", "1").observe(0.0002 * (index + 1))
        metrics.ready.set(index)  # the first worker is not ready yet
    workers[1].publish()
    merged = samples(workers[0].render())
    assert merged[("mlops_requests_total", (("model", "m"), ("status", "200"), ("version", "1")))] == 7
    assert merged[("mlops_request_seconds_count", (("model", "m"), ("version", "1")))] == 2
    assert merged[("mlops_request_seconds_bucket", (("le", "0.00025"), ("model", "m"), ("version", "1")))] == 1
    assert merged[("mlops_request_seconds_sum", (("model", "m"), ("version", "1")))] == pytest.approx(0.0006)
    assert merged[("mlops_ready", ())] == 0  # ready only when every worker is
    assert merged[("mlops_workers", ())] == 2


def test_a_lone_request_runs_inline_and_a_crowd_merges_on_the_batch_thread() -> None:
    threads: list[tuple[str, int]] = []

    def model(feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        x = feeds["x"]
        threads.append((threading.current_thread().name, len(x)))
        return {"y": x * 2}

    async def scenario() -> None:
        batcher = Batcher(model, max_batch_size=64, max_delay_s=0)
        try:
            alone = await batcher.submit({"x": np.ones((1, 3), np.float32)})
            assert threads == [(threading.main_thread().name, 1)]  # no hop when nothing else waits
            np.testing.assert_array_equal(alone[0]["y"], np.full((1, 3), 2, np.float32))
            crowd = await asyncio.gather(*(batcher.submit({"x": np.full((1, 3), i, np.float32)}) for i in range(8)))
            assert threads[1:] == [(threads[1][0], 8)] and threads[1][0].startswith("batch")
            for i, (outputs, _, rows) in enumerate(crowd):
                assert rows == 8
                np.testing.assert_array_equal(outputs["y"], np.full((1, 3), 2 * i, np.float32))
        finally:
            batcher.close()

    asyncio.run(scenario())


def test_a_collection_file_with_several_workers_is_refused(models: Models) -> None:
    if not TWO_CPUS:
        pytest.skip("one CPU here: the server caps its workers at the CPUs it may use")
    settings = models.folder / "collect-workers.json"
    settings.write_text(
        json.dumps(
            {
                "models": [model_entry(models, "iris")],
                "workers": 2,
                "collection": {"enabled": True, "sample_rate": 1.0, "sink": "file"},
            }
        )
    )
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "mlops_iac.serving",
            "--config",
            str(settings),
            "--host",
            "127.0.0.1",
            "--port",
            str(free_port()),
        ],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 1
    assert "collection.sink is `file` with 2 workers" in done.stderr and "Traceback" not in done.stderr


def test_one_worker_leaves_the_settings_as_they_were() -> None:
    from mlops_iac.serving.config import ServerConfig

    one = ServerConfig.model_validate({"models": [{"name": "m", "version": 1, "path": "m.onnx"}]})
    assert "workers" not in one.model_dump(mode="json")  # deployed settings and their digests unchanged
    two = one.model_copy(update={"workers": 2})
    assert ServerConfig.model_validate_json(two.model_dump_json()).workers == 2
