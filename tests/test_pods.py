"""What we deploy runs on a real engine: every rendered pod spec and the Docker component's
container, started on the CI Docker engine with the settings we deploy them with.

The image is the one `mlops-iac build` makes from the quickstart (as in test_build.py), put in
place of the rendered reference; everything else (args, env from the ConfigMap and the API key
Secret, user, read-only root, capabilities, volumes, limits, probes, grace period) is read from
the rendered objects. Each container is checked as Kubernetes and Prometheus would use it:
probes, an authenticated inference equal to onnxruntime in process (over REST and gRPC), 401
(UNAUTHENTICATED) without the key, the ServiceMonitor's scrape, data collection on its volume,
memory under the profile's limit at the profile's target rate, and SIGTERM draining requests
in flight.
"""

from __future__ import annotations

import contextlib
import http.client
import json
import re
import shutil
import subprocess
import tempfile
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import yaml
from click.testing import CliRunner

from mlops_iac.cli import main

from . import podrun
from .conftest import QUICKSTART, ROOT, OciRegistryServer, require
from .podrun import ContainerRun, Object, Unsupported
from .test_build import docker_engine  # noqa: F401 - the session's engine and base image, as test_build uses them

PRODUCTION = ROOT / "examples" / "production"
KEY = "ci-test-key-" + uuid.uuid4().hex[:8]
ROWS_PER_REQUEST = 4  # the load's request: a few rows of the sample, as a client sends
DRAIN_ROWS = 20_000  # heavy enough that requests are in flight when SIGTERM arrives
LOAD_SECONDS = 15
REPORT: list[str] = []


def cli(folder: Path, *args: str) -> str:
    with contextlib.chdir(folder):
        result = CliRunner().invoke(main, list(args))
    assert result.exit_code == 0, result.output
    return result.output


@dataclass(frozen=True)
class Built:
    folder: Path  # the quickstart, trained, converted, profiled, built and pushed
    image: str  # the local reference of the built image
    onnx_digest: str
    sample: np.ndarray


@pytest.fixture(scope="session")
def built(
    tmp_path_factory: pytest.TempPathFactory,
    docker_engine: str,  # noqa: F811
    oci_registry: OciRegistryServer,
) -> Iterator[Built]:
    """The quickstart as a user takes it to a cluster: trained, registered, converted, profiled
    and built, with a Kubernetes target beside its local one; once per session."""
    import runpy

    if shutil.which("wrk") is None:
        require("wrk (apt-get install wrk): the load generator")
    folder = tmp_path_factory.mktemp("pods-quickstart")
    for name in ("mlops.yaml", "train.py"):
        shutil.copyfile(QUICKSTART / name, folder / name)
    runpy.run_path(str(folder / "train.py"), run_name="__main__")
    base = f"{oci_registry.address}/base/python:3.11-bookworm"
    podrun.docker("tag", docker_engine, base)
    base_digest = next(w for w in podrun.docker("push", base, timeout=600).split() if w.startswith("sha256:"))
    spec = folder / "mlops.yaml"
    pinned = f"{base.rsplit(':', 1)[0]}@{base_digest}"
    text = spec.read_text().replace("registry:\n", f'build:\n  baseImage: "{pinned}"\n\nregistry:\n', 1)
    text = text.replace("targets:\n", "targets:\n  cluster:\n    kind: kubernetes\n    namespace: quickstart\n", 1)
    text = text.replace(
        "deployments:\n",
        "deployments:\n  - name: iris-cluster\n    model: iris\n    version: 1\n"
        "    target: cluster\n    hardware: {cpu: auto, memory: auto}\n    auth: key\n",
        1,
    )
    spec.write_text(text)
    cli(folder, "register", "iris", "--file", "model.joblib")
    cli(folder, "convert", "iris@1", "--no-speed")
    cli(folder, "profile", "iris@1", "--quick", "--budget", "20")
    output = cli(folder, "build", "iris@1", "--push", f"{oci_registry.address}/models")
    image = next(line.split()[1] for line in output.splitlines() if line.startswith("built "))
    lock = yaml.safe_load((folder / "mlops.lock").read_text())
    yield Built(
        folder,
        image,
        lock["models"]["iris"]["versions"][1]["onnx"]["digest"],
        np.load(folder / "sample.npy").astype(np.float32),
    )
    if REPORT:
        print("\n" + "\n".join(["per rendered container:", *REPORT]))


def rendered(folder: Path, target: str) -> list[Object]:
    """`mlops-iac render --format json`: the objects a user applies (the Secret is theirs to make)."""
    out = folder / f"rendered-{target}.json"
    cli(folder, "render", "--target", target, "--format", "json", "--out", str(out))
    items: list[Object] = json.loads(out.read_text())["items"]
    return items


def production(built: Built, tmp: Path) -> Path:
    """examples/production with its lock. Version 2's ONNX was made outside CI and cannot be
    rebuilt here, so its pinned digest becomes the one of the model in the CI image (version 1's
    model is the quickstart's, byte for byte); nothing else of the lock changes."""
    folder = tmp / "production"
    folder.mkdir()
    shutil.copyfile(PRODUCTION / "mlops.yaml", folder / "mlops.yaml")
    lock = (PRODUCTION / "mlops.lock").read_text()
    v2 = yaml.safe_load(lock)["models"]["iris"]["versions"][2]["onnx"]["digest"]
    (folder / "mlops.lock").write_text(lock.replace(v2, built.onnx_digest))
    return folder


def with_secrets(objects: list[Object]) -> list[Object]:
    """The Secrets a user creates beside the rendered objects (the API key), holding the test key."""
    names: dict[str, set[str]] = {}
    for dep in (o for o in objects if o["kind"] == "Deployment"):
        pod = dep["spec"]["template"]["spec"]
        for container in pod["containers"]:
            for var in container.get("env", []):
                ref = var.get("valueFrom", {}).get("secretKeyRef")
                if ref:
                    names.setdefault(ref["name"], set()).add(ref["key"])
            for source in container.get("envFrom", []):
                if "secretRef" in source:
                    names.setdefault(source["secretRef"]["name"], set()).add("apiKey")
        for volume in pod.get("volumes", []):
            if "secret" in volume:
                names.setdefault(volume["secret"]["secretName"], set()).add("apiKey")
    present = {o["metadata"]["name"] for o in objects if o["kind"] == "Secret"}
    return objects + [
        {
            "apiVersion": "v1",
            "kind": "Secret",
            "metadata": {"name": n},
            "type": "Opaque",
            "stringData": {k: KEY for k in sorted(keys)},
        }
        for n, keys in names.items()
        if n not in present
    ]


# --- checks against one running container ------------------------------------------------------


@dataclass(frozen=True)
class Expect:
    """What the rendered objects say about one container besides its `docker run`."""

    label: str
    settings: dict[str, Any]  # the server settings the container got
    scrape: tuple[int, str, dict[str, str]] | None  # port, path, headers: the ServiceMonitor's scrape
    memory_limit: int
    target_rps: float


def settings_of(run: ContainerRun) -> dict[str, Any]:
    """The server settings the container gets: from its environment, else the `--config` file
    its arguments name, on a configMap volume."""
    if "MLOPS_IAC_SERVER_SETTINGS" in run.env:
        settings: dict[str, Any] = json.loads(run.env["MLOPS_IAC_SERVER_SETTINGS"])
        return settings
    path = run.argv[run.argv.index("--config") + 1] if "--config" in run.argv else None
    for mount, folder in run.file_volumes.items():
        if path and path.startswith(mount.rstrip("/") + "/"):
            settings = json.loads((folder / path[len(mount.rstrip("/")) + 1 :]).read_text())
            return settings
    raise AssertionError(f"{run.name}: no server settings in its environment or on a configMap volume")


def api_port(run: ContainerRun) -> int:
    """The inference port: the container port named `http`, else the one the server is told to
    listen on (`--port N` in its arguments)."""
    if "http" in run.ports:
        return run.ports["http"]
    return int(run.argv[run.argv.index("--port") + 1])


def infer_body(rows: np.ndarray) -> bytes:
    return json.dumps(
        {"inputs": [{"name": "input", "shape": list(rows.shape), "datatype": "FP32", "data": rows.ravel().tolist()}]}
    ).encode()


def post(port: int, path: str, body: bytes, headers: dict[str, str], timeout: float = 30) -> tuple[int, bytes]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        conn.request("POST", path, body, {"Content-Type": "application/json", **headers})
        response = conn.getresponse()
        return response.status, response.read()
    finally:
        conn.close()


def get(port: int, path: str, headers: dict[str, str] | None = None) -> tuple[int, bytes]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        conn.request("GET", path, headers=headers or {})
        response = conn.getresponse()
        return response.status, response.read()
    finally:
        conn.close()


def auth_headers(settings: dict[str, Any]) -> dict[str, str]:
    return {"Authorization": f"Bearer {KEY}"} if settings["auth"] else {}


def infer_path(settings: dict[str, Any]) -> str:
    model = settings["models"][0]
    return f"/v2/models/{model['name']}/versions/{model['version']}/infer"


def check_inference(run: ContainerRun, expect: Expect, built: Built) -> None:
    from mlops_iac.convert.onnx_tools import run as ort_run
    from mlops_iac.convert.onnx_tools import session

    rows = built.sample[:5]
    status, body = post(api_port(run), infer_path(expect.settings), infer_body(rows), auth_headers(expect.settings))
    assert status == 200, body
    outputs = {o["name"]: np.array(o["data"]).reshape(o["shape"]) for o in json.loads(body)["outputs"]}
    # The model inside the image, run in process: the context that built it holds the same bytes.
    model = (built.folder / "build/iris-1/model/model.onnx").read_bytes()
    label, probabilities = ort_run(session(model), rows)[:2]
    assert outputs["label"].tolist() == label.tolist()
    np.testing.assert_allclose(outputs["probabilities"], probabilities, rtol=1e-6, atol=1e-7)
    status, body = post(api_port(run), infer_path(expect.settings), infer_body(rows), {})
    assert status == (401 if expect.settings["auth"] else 200), body


def check_grpc(run: ContainerRun, expect: Expect, built: Built) -> str:
    """The v2 gRPC API on the port the pod (or the component) exposes, as tritonclient.grpc uses
    it: the same answer as onnxruntime in process, and UNAUTHENTICATED without the key."""
    import tritonclient.grpc as grpcclient
    from tritonclient.utils import InferenceServerException

    from mlops_iac.convert.onnx_tools import run as ort_run
    from mlops_iac.convert.onnx_tools import session

    listening = expect.settings["grpc_port"]
    port = run.ports.get("grpc", run.ports.get(str(listening)))
    assert port == listening, f"{expect.label}: gRPC listens on {listening} but is exposed as {run.ports}"
    rows = built.sample[:5].astype(np.float32)
    tensor = grpcclient.InferInput("input", list(rows.shape), "FP32")
    tensor.set_data_from_numpy(rows)
    model = expect.settings["models"][0]
    with grpcclient.InferenceServerClient(f"127.0.0.1:{port}") as client:
        answer = client.infer(
            model["name"],
            [tensor],
            model_version=str(model["version"]),
            headers={k.lower(): v for k, v in auth_headers(expect.settings).items()},
        )
        if expect.settings["auth"]:
            with pytest.raises(InferenceServerException, match="UNAUTHENTICATED"):
                client.infer(model["name"], [tensor])
    label, probabilities = ort_run(session((built.folder / "build/iris-1/model/model.onnx").read_bytes()), rows)[:2]
    assert answer.as_numpy("label").tolist() == label.tolist()
    np.testing.assert_allclose(answer.as_numpy("probabilities"), probabilities, rtol=1e-6, atol=1e-7)
    return f"gRPC on {port} ok"


def check_scrape(run: ContainerRun, expect: Expect) -> tuple[str, str | None]:
    """/metrics as Prometheus scrapes it (through the ServiceMonitor: its port, path and auth).
    Returns the figure for the report and, when the scrape is refused, the problem."""
    if expect.scrape is None:
        return "no ServiceMonitor", None
    port, path, headers = expect.scrape
    status, body = get(port, path, headers)
    if status != 200:
        return f"scrape {port}{path} {status}", (
            f"{expect.label}: the ServiceMonitor scrapes {path} on port {port} "
            f"{'with' if headers else 'without'} credentials and gets {status}: {body[:120]!r}"
        )
    assert re.search(rb"^mlops_requests_total\{.*status=\"200\"", body, re.M), body[:500]
    return f"scrape {port}{path} 200", None


def check_collection(run: ContainerRun, expect: Expect) -> str:
    """Sampled requests land in the collection file, on the rendered writable volume."""
    collection = expect.settings["collection"]
    if not collection["enabled"] or collection["sink"] != "file":
        return "collection off"
    path = collection["path"]
    mount = next((m for m in run.mounts if path.startswith(m.rstrip("/") + "/")), None)
    assert mount is not None, f"{expect.label}: collection path {path} is on no mounted volume: {dict(run.mounts)}"
    deadline = time.monotonic() + 10  # the collector's writer thread flushes in the background
    while True:
        done = subprocess.run(["docker", "exec", run.name, "cat", path], capture_output=True, timeout=30)
        lines = done.stdout.decode().splitlines()
        if lines or time.monotonic() > deadline:
            break
        time.sleep(0.5)
    assert lines, f"{expect.label}: nothing collected at {path}: {done.stderr.decode()}\n{podrun._stderr(run.name)}"
    assert all(json.loads(line)["inputs"] for line in lines)
    for path, (folder, limit) in run.disk_volumes.items():  # what the kubelet would evict the pod for
        used = sum(f.stat().st_size for f in folder.rglob("*") if f.is_file())
        assert limit is None or used < limit, f"{expect.label}: {path} holds {used} bytes, over its sizeLimit {limit}"
    return f"{len(lines)} records in {mount}"


@dataclass
class Load:
    p99_ms: float
    rps: float
    requests: int
    errors: int


def drive(port: int, path: str, body: bytes, headers: dict[str, str], rate: float, seconds: int) -> Load:
    """wrk, paced to `rate` requests/s over a few connections (each waits its share before the
    next request), for `seconds`: every response must be a 200."""
    connections = 32  # enough that each one's wait dwarfs the response time, so the rate holds
    lua = (
        f'wrk.method = "POST"\nwrk.body = {json.dumps(body.decode())}\n'
        'wrk.headers["Content-Type"] = "application/json"\n'
        + "".join(f"wrk.headers[{json.dumps(k)}] = {json.dumps(v)}\n" for k, v in headers.items())
        + f"function delay() return {connections * 1000 / rate:.3f} end\n"
    )
    with tempfile.NamedTemporaryFile("w", suffix=".lua", delete=False) as handle:
        handle.write(lua)
    script = Path(handle.name)
    try:
        out = subprocess.run(
            [
                "wrk",
                "-t2",
                f"-c{connections}",
                f"-d{seconds}s",
                "--latency",
                "-s",
                str(script),
                f"http://127.0.0.1:{port}{path}",
            ],
            capture_output=True,
            text=True,
            timeout=seconds + 60,
            check=True,
        ).stdout
    finally:
        script.unlink()
    p99 = re.search(r"99%\s+([\d.]+)(us|ms|s)\b", out)
    total = re.search(r"(\d+) requests in", out)
    assert p99 and total, out
    errors = sum(int(n) for n in re.findall(r"(?:Non-2xx or 3xx responses|connect|read|write|timeout):? (\d+)", out))
    return Load(
        p99_ms=float(p99.group(1)) * {"us": 1e-3, "ms": 1.0, "s": 1e3}[p99.group(2)],
        rps=float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1)),  # type: ignore[union-attr]
        requests=int(total.group(1)),
        errors=errors,
    )


def check_memory_under_load(run: ContainerRun, expect: Expect, built: Built) -> tuple[Load, int, str]:
    """The profile's target rate for LOAD_SECONDS under the rendered limits, probes running at
    their rendered periods: no failed request or probe, the working set under the limit."""
    cgroup = podrun.memory_cgroup(run.name)
    peak, probe_failures, stop = [0], [], threading.Event()

    def sample() -> None:
        next_probe = {p: 0.0 for p in (run.readiness, run.liveness) if p is not None}
        while not stop.is_set():
            if cgroup is not None:
                peak[0] = max(peak[0], podrun.working_set(cgroup))
            else:
                usage = podrun.docker("stats", "--no-stream", "--format", "{{json .}}", run.name)
                peak[0] = max(
                    peak[0],
                    int(
                        podrun.memory_bytes(
                            json.loads(usage)["MemUsage"].split()[0].replace("iB", "i").replace("B", "")
                        )
                    ),
                )
            for probe, due in next_probe.items():
                if time.monotonic() >= due:
                    if not probe.check():
                        probe_failures.append(probe.path)
                    next_probe[probe] = time.monotonic() + probe.period
            time.sleep(0.1)

    sampler = threading.Thread(target=sample)
    sampler.start()
    try:
        rows = np.tile(built.sample, (1 + ROWS_PER_REQUEST // len(built.sample), 1))[:ROWS_PER_REQUEST]
        load = drive(
            api_port(run),
            infer_path(expect.settings),
            infer_body(rows),
            auth_headers(expect.settings),
            expect.target_rps,
            LOAD_SECONDS,
        )
    finally:
        stop.set()
        sampler.join()
    assert not podrun.state(run.name)["OOMKilled"]
    assert load.errors == 0, f"{expect.label}: {load.errors} failed requests at {expect.target_rps} requests/s"
    # Probes count as failed only at failure_threshold in a row; here not one may fail.
    assert not probe_failures, f"{expect.label}: probes failed under load: {probe_failures}"
    assert peak[0] < expect.memory_limit, f"{expect.label}: working set {peak[0]} over the limit {expect.memory_limit}"
    cache = f", cgroup high-water mark {podrun.peak_usage(cgroup) / 2**20:.0f} MiB" if cgroup else ""
    return load, peak[0], cache


def check_drain(run: ContainerRun, expect: Expect, built: Built) -> str:
    """Termination as the kubelet does it: the preStop hook, then SIGTERM, all within the grace
    period, while clients keep sending until the endpoint is gone (at SIGTERM). Every request
    sent must succeed, some must be in flight when SIGTERM arrives, and the server must exit by
    itself before the grace period ends."""
    body = infer_body(np.tile(built.sample, (1 + DRAIN_ROWS // len(built.sample), 1))[:DRAIN_ROWS])
    headers, port, path = auth_headers(expect.settings), api_port(run), infer_path(expect.settings)
    stopping, results, lock = threading.Event(), [], threading.Lock()

    def client() -> None:
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
        while not stopping.is_set():
            started = time.monotonic()
            try:
                conn.request("POST", path, body, {"Content-Type": "application/json", **headers})
                response = conn.getresponse()
                response.read()
                outcome: Any = response.status
            except OSError as exc:
                outcome = repr(exc)
            with lock:
                results.append((started, time.monotonic(), outcome))
        conn.close()

    clients = [threading.Thread(target=client) for _ in range(4)]
    for thread in clients:
        thread.start()
    time.sleep(1)
    began = time.monotonic()
    if run.pre_stop is not None:
        if run.pre_stop[0] == "@sleep":  # the kubelet's own sleep action
            time.sleep(float(run.pre_stop[1]))
        else:
            podrun.docker("exec", run.name, *run.pre_stop, timeout=run.grace_seconds)
    remaining = max(1, int(run.grace_seconds - (time.monotonic() - began)))
    stopping.set()
    term = time.monotonic()
    podrun.docker("stop", "--time", str(remaining), run.name, timeout=remaining + 30)
    exited = time.monotonic()
    for thread in clients:
        thread.join()
    status = podrun.state(run.name)
    failed = [r for r in results if r[2] != 200]
    assert not failed, f"{expect.label}: {len(failed)} of {len(results)} requests failed while stopping: {failed[:3]}"
    in_flight = sum(1 for start, end, _ in results if start < term < end)
    assert in_flight >= 1, f"{expect.label}: no request was in flight at SIGTERM; the drain was not exercised"
    # Past the grace period the engine kills (137), as the kubelet does: 0 means it drained in time.
    assert status["ExitCode"] == 0 and not status["OOMKilled"], (status, podrun._stderr(run.name))
    return f"drained {in_flight} in flight, exit 0 in {exited - term:.1f}s of {run.grace_seconds:g}s"


def exercise(run: ContainerRun, expect: Expect, built: Built) -> str | None:
    """Start the container, check it as it is used, stop it; one line of figures for the report.
    Returns the scrape problem, if any, for the caller to judge (see `settle`)."""
    podrun.docker("rm", "-f", run.name, check=False)
    run.start()
    try:
        if run.healthcheck:
            ready, probes = wait_healthy(run), "docker HEALTHCHECK healthy"
        else:
            ready, attempts = podrun.run_startup(run)
            assert run.readiness is not None and run.readiness.check(), "readiness probe after startup"
            assert run.liveness is not None and run.liveness.check(), "liveness probe after startup"
            probes = (
                f"startup {run.startup.path if run.startup else '-'} ok at try {attempts}, "
                f"readiness {run.readiness.path} ok, liveness {run.liveness.path} ok"
            )
        check_inference(run, expect, built)
        grpc = check_grpc(run, expect, built)
        load, peak, cache = check_memory_under_load(run, expect, built)
        scrape, refused = check_scrape(run, expect)
        collected = check_collection(run, expect)
        drained = check_drain(run, expect, built)
        REPORT.append(
            f"- {expect.label}: ready in {ready:.1f}s; {probes}; {grpc}; {scrape}; {collected}; "
            f"{load.requests} requests at {load.rps:.0f}/s (target {expect.target_rps:g}) p99 {load.p99_ms:.2f} ms "
            f"under {run.cpu_limit:g} CPU ({expect.settings['models'][0]['threads']} thread(s), batches up to "
            f"{expect.settings['models'][0]['max_batch_size']}), 0 errors; peak working set {peak / 2**20:.0f} MiB of "
            f"{expect.memory_limit / 2**20:.0f} MiB{cache}; {drained}"
        )
    finally:
        podrun.docker("rm", "-f", run.name, check=False)
    return refused


def wait_healthy(run: ContainerRun) -> float:
    """The engine's HEALTHCHECK turns `healthy` within its start period plus its retries."""
    started = time.monotonic()
    inputs = [
        run.argv[i + 1]
        for i, flag in enumerate(run.argv)
        if flag.startswith("--health-") and flag in ("--health-start-period", "--health-interval")
    ]
    budget = sum(podrun.duration_seconds(v) for v in inputs) * 4
    while time.monotonic() - started < budget:
        status = podrun.state(run.name)
        if status.get("Health", {}).get("Status") == "healthy":
            return time.monotonic() - started
        # With `restart: unless-stopped` a crash shows as a restart, not as a stopped container.
        restarts = int(podrun.docker("inspect", "--format", "{{.RestartCount}}", run.name))
        assert status["Running"] and restarts == 0, (
            f"{run.name} stopped before it was healthy:\n{podrun._stderr(run.name)}"
        )
        time.sleep(0.5)
    raise AssertionError(f"{run.name} not healthy in {budget}s: {podrun.state(run.name).get('Health')}")


# --- from rendered objects to runs -------------------------------------------------------------


def settle(problems: list[tuple[ContainerRun, Expect, str | None]]) -> None:
    """Fail on any scrape problem: Prometheus must reach /metrics as the ServiceMonitor says."""
    assert not [p for _, _, p in problems if p is not None], problems


def matches(selector: dict[str, str], label_set: dict[str, str]) -> bool:
    return all(label_set.get(k) == v for k, v in selector.items())


def scrape_of(objects: list[Object], deployment: Object, run: ContainerRun) -> tuple[int, str, dict[str, str]] | None:
    """The ServiceMonitor endpoint that selects this pod's Service: its port (by the Service's
    port name, to the container port), path and credentials, as Prometheus resolves them."""
    pod_labels = deployment["spec"]["template"]["metadata"]["labels"]
    services = [
        s
        for s in objects
        if s["kind"] == "Service" and s["spec"]["selector"] and matches(s["spec"]["selector"], pod_labels)
    ]
    for monitor in (o for o in objects if o["kind"] == "ServiceMonitor"):
        for service in services:
            if not matches(monitor["spec"]["selector"]["matchLabels"], service["metadata"]["labels"]):
                continue
            (endpoint,) = monitor["spec"]["endpoints"]
            podrun._check(endpoint, {"port", "path", "interval", "scheme"}, "ServiceMonitor endpoint")  # no auth
            port = next(p for p in service["spec"]["ports"] if p["name"] == endpoint["port"])
            target = port.get("targetPort", port["port"])
            return run.ports[str(target)], endpoint.get("path", "/metrics"), {}
    return None


def target_rps(folder: Path, per: int) -> float:
    spec = yaml.safe_load((folder / "mlops.yaml").read_text())
    return float(spec["models"][0]["profile"]["targetRps"]) / per


def kubernetes_runs(folder: Path, target: str, built: Built, workdir: Path) -> list[tuple[ContainerRun, Expect]]:
    objects = with_secrets(rendered(folder, target))
    lock = yaml.safe_load((folder / "mlops.lock").read_text())["models"]
    runs = []
    for dep in (o for o in objects if o["kind"] == "Deployment"):
        name = dep["metadata"]["name"]
        run = podrun.pod_run(
            dep, objects, image=built.image, name=f"wt-pods-{name}-{uuid.uuid4().hex[:6]}", workdir=workdir
        )
        settings = settings_of(run)
        model = settings["models"][0]
        hpa = next(o for o in objects if o["kind"] == "HorizontalPodAutoscaler" and o["metadata"]["name"] == name)
        recommended = lock[model["name"]]["versions"][model["version"]]["recommendation"]["memoryLimitBytes"]
        assert run.memory_limit is not None and run.memory_limit >= recommended  # the profile's, rounded to MiB
        # the working set is held to the profile's own figure, not to the rounded-up limit
        runs.append(
            (
                run,
                Expect(
                    label=f"{target} {name}",
                    settings=settings,
                    scrape=scrape_of(objects, dep, run),
                    memory_limit=recommended,
                    # each replica's share of the target rate, at the HPA's floor
                    target_rps=target_rps(folder, hpa["spec"]["minReplicas"]),
                ),
            )
        )
    return runs


@pytest.fixture
def workdir(tmp_path: Path) -> Path:
    # configMap/secret volumes are host folders the engine mounts: they must be readable to it.
    tmp_path.chmod(0o755)
    return tmp_path


def test_quickstart_pod_runs_as_rendered(built: Built, workdir: Path) -> None:
    runs = kubernetes_runs(built.folder, "cluster", built, workdir)
    assert len(runs) == 1
    settle([(run, expect, exercise(run, expect, built)) for run, expect in runs])


def test_production_canary_pods_run_as_rendered(built: Built, workdir: Path) -> None:
    folder = production(built, workdir)
    runs = kubernetes_runs(folder, "prod", built, workdir)
    assert sorted(e.settings["models"][0]["version"] for _, e in runs) == [1, 2]  # both versions of the canary
    settle([(run, expect, exercise(run, expect, built)) for run, expect in runs])


def test_production_docker_container_runs_as_the_component_asks(built: Built) -> None:
    from .test_stacks import run_program, stack_plan

    mocks, _ = run_program(stack_plan("edge"))
    (container,) = mocks.of("docker:index/container:Container")
    volumes = {}
    for volume in mocks.of("docker:index/volume:Volume"):
        volumes[volume.inputs["name"]] = podrun.docker("volume", "create", f"wt-pods-{uuid.uuid4().hex[:8]}")
    run = podrun.container_run(
        container.inputs, image=built.image, name=f"wt-pods-edge-{uuid.uuid4().hex[:6]}", volumes=volumes
    )
    assert run.memory_limit is not None
    settings = settings_of(run)
    # No ServiceMonitor on a Docker host: a Prometheus scrapes the metrics listener, else the API port.
    scrape = (
        (settings["metrics_port"], "/metrics", {})
        if settings.get("metrics_port")
        else (api_port(run), "/metrics", auth_headers(settings))
    )
    expect = Expect(
        label="edge (pulumi-docker)",
        settings=settings,
        scrape=scrape,
        memory_limit=run.memory_limit,
        target_rps=target_rps(PRODUCTION, 1),
    )
    try:
        settle([(run, expect, exercise(run, expect, built))])
    finally:
        for created in volumes.values():
            podrun.docker("volume", "rm", "-f", created, check=False)


def test_a_setting_that_stops_the_server_is_caught(built: Built, workdir: Path) -> None:
    """Proof that these tests catch what would crash-loop a pod: the read-only root without the
    writable volume the server writes its collected data to."""
    objects = with_secrets(rendered(built.folder, "cluster"))
    (dep,) = [o for o in objects if o["kind"] == "Deployment"]
    path = settings_of(podrun.pod_run(dep, objects, image=built.image, name="as-rendered", workdir=workdir))[
        "collection"
    ]["path"]
    pod = dep["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    (mount,) = [m for m in container["volumeMounts"] if path.startswith(m["mountPath"].rstrip("/") + "/")]
    container["volumeMounts"].remove(mount)
    pod["volumes"] = [v for v in pod["volumes"] if v["name"] != mount["name"]]
    run = podrun.pod_run(
        dep, objects, image=built.image, name=f"wt-pods-broken-{uuid.uuid4().hex[:6]}", workdir=workdir
    )
    assert "--read-only" in run.argv
    podrun.docker("rm", "-f", run.name, check=False)
    run.start()
    try:
        with pytest.raises(AssertionError, match=r"stopped before it was ready(.|\n)*Read-only file system"):
            podrun.run_startup(run)
    finally:
        podrun.docker("rm", "-f", run.name, check=False)


def test_unknown_fields_fail_the_translation(workdir: Path) -> None:
    deployment: Object = {
        "kind": "Deployment",
        "metadata": {"name": "x"},
        "spec": {
            "template": {
                "spec": {
                    "automountServiceAccountToken": False,
                    "hostNetwork": True,
                    "containers": [{"name": "s", "image": "i"}],
                }
            }
        },
    }
    with pytest.raises(Unsupported, match="hostNetwork"):
        podrun.pod_run(deployment, [], image="i", name="n", workdir=workdir)
    pod = deployment["spec"]["template"]["spec"]
    del pod["hostNetwork"]
    pod["containers"][0]["stdin"] = True
    with pytest.raises(Unsupported, match="stdin"):
        podrun.pod_run(deployment, [], image="i", name="n", workdir=workdir)
    del pod["containers"][0]["stdin"]
    pod["containers"][0]["livenessProbe"] = {"exec": {"command": ["true"]}}
    with pytest.raises(Unsupported, match="exec"):
        podrun.pod_run(deployment, [], image="i", name="n", workdir=workdir)
    with pytest.raises(Unsupported, match="devices"):
        podrun.container_run({"name": "c", "image": "i", "devices": []}, image="i", name="n", volumes={})


def test_translation_of_the_rendered_fields() -> None:
    """The flags each security, volume and resource field becomes, on a pod with all of them."""
    deployment: Object = {
        "kind": "Deployment",
        "metadata": {"name": "x"},
        "spec": {
            "template": {
                "spec": {
                    "automountServiceAccountToken": False,
                    "terminationGracePeriodSeconds": 40,
                    "securityContext": {
                        "runAsNonRoot": True,
                        "runAsUser": 10001,
                        "runAsGroup": 10001,
                        "fsGroup": 10001,
                        "seccompProfile": {"type": "RuntimeDefault"},
                    },
                    "volumes": [
                        {"name": "tmp", "emptyDir": {"medium": "Memory", "sizeLimit": "64Mi"}},
                        {"name": "cfg", "configMap": {"name": "c"}},
                        {"name": "data", "emptyDir": {"sizeLimit": "1Gi"}},
                    ],
                    "containers": [
                        {
                            "name": "s",
                            "image": "rendered",
                            "imagePullPolicy": "IfNotPresent",
                            "args": ["--port", "8080"],
                            "ports": [
                                {"name": "http", "containerPort": 8080, "protocol": "TCP"},
                                {"name": "metrics", "containerPort": 8082, "protocol": "TCP"},
                            ],
                            "envFrom": [{"configMapRef": {"name": "c"}}],
                            "env": [{"name": "K", "valueFrom": {"secretKeyRef": {"name": "s", "key": "apiKey"}}}],
                            "resources": {
                                "requests": {"cpu": "100m", "memory": "64Mi"},
                                "limits": {"cpu": "1500m", "memory": "128Mi"},
                            },
                            "securityContext": {
                                "allowPrivilegeEscalation": False,
                                "readOnlyRootFilesystem": True,
                                "capabilities": {"drop": ["ALL"]},
                            },
                            "readinessProbe": {"httpGet": {"path": "/ready", "port": "http"}, "periodSeconds": 5},
                            "livenessProbe": {"httpGet": {"path": "/live", "port": "metrics"}, "timeoutSeconds": 2},
                            "lifecycle": {"preStop": {"sleep": {"seconds": 5}}},
                            "volumeMounts": [
                                {"name": "tmp", "mountPath": "/tmp"},
                                {"name": "cfg", "mountPath": "/etc/c"},
                                {"name": "data", "mountPath": "/data"},
                            ],
                        }
                    ],
                }
            }
        },
    }
    objects: list[Object] = [
        {"kind": "ConfigMap", "metadata": {"name": "c"}, "data": {"A": "1"}},
        {"kind": "Secret", "metadata": {"name": "s"}, "data": {"apiKey": "a2V5"}},
    ]
    with tempfile_dir() as workdir:
        run = podrun.pod_run(deployment, objects, image="built", name="n", workdir=workdir)
        argv = " ".join(run.argv)
        assert (workdir / next(p.name for p in run.files if "-cfg-" in p.name) / "A").read_text() == "1"
        data, limit = run.disk_volumes["/data"]
        assert limit == 2**30 and f"-v {data}:/data " in " ".join(run.argv)
        assert data.stat().st_mode & 0o7777 == 0o2777 and data.stat().st_gid == 10001  # as the kubelet makes it
    for flag in (
        "--read-only",
        "--cap-drop ALL",
        "--security-opt no-new-privileges",
        "--user 10001:10001",
        "--group-add 10001",
        "--tmpfs /tmp:rw,mode=2777,gid=10001,size=67108864",
        "--cpus 1.5",
        f"--memory {128 * 2**20} --memory-swap {128 * 2**20}",
        "--network host",
        "--no-healthcheck",
        "-e A=1",
        "-e K=key",
        "built --port 8080",
    ):
        assert flag in argv, (flag, argv)
    assert re.search(r"-v \S+:/etc/c:ro", argv)
    assert run.readiness == podrun.Probe("/ready", 8080, period=5)
    assert run.liveness == podrun.Probe("/live", 8082, timeout=2) and run.ports["metrics"] == 8082
    assert run.pre_stop == ("@sleep", "5") and run.grace_seconds == 40 and run.memory_limit == 128 * 2**20
    container = deployment["spec"]["template"]["spec"]["containers"][0]
    container["lifecycle"] = {"preStop": {"exec": {"command": ["sleep", "5"]}}}
    with tempfile_dir() as workdir:
        assert podrun.pod_run(deployment, objects, image="b", name="n", workdir=workdir).pre_stop == ("sleep", "5")


@contextlib.contextmanager
def tempfile_dir() -> Iterator[Path]:
    with tempfile.TemporaryDirectory() as name:
        yield Path(name)


def test_quantities() -> None:
    assert podrun.memory_bytes("128Mi") == 128 * 2**20 and podrun.memory_bytes("1G") == 10**9
    assert podrun.memory_bytes(134217728) == 134217728
    assert podrun.cpu_cores("500m") == 0.5 and podrun.cpu_cores("1") == 1 and podrun.cpu_cores(0.5) == 0.5
    assert podrun.duration_seconds("1m30s") == 90 and podrun.duration_seconds("500ms") == 0.5
    with pytest.raises(Unsupported):
        podrun.memory_bytes("lots")


def test_settings_from_a_mounted_config_file(workdir: Path) -> None:
    deployment: Object = {
        "kind": "Deployment",
        "metadata": {"name": "x"},
        "spec": {
            "template": {
                "spec": {
                    "automountServiceAccountToken": False,
                    "volumes": [{"name": "settings", "configMap": {"name": "x-0123abcd"}}],
                    "containers": [
                        {
                            "name": "s",
                            "image": "i",
                            "args": ["--config", "/etc/mlops/server.json"],
                            "volumeMounts": [{"name": "settings", "mountPath": "/etc/mlops", "readOnly": True}],
                        }
                    ],
                }
            }
        },
    }
    objects: list[Object] = [
        {"kind": "ConfigMap", "metadata": {"name": "x-0123abcd"}, "data": {"server.json": '{"auth": true}'}}
    ]
    run = podrun.pod_run(deployment, objects, image="b", name="n", workdir=workdir)
    assert settings_of(run) == {"auth": True} and run.mounts == {"/etc/mlops": "configMap"}


# --- an IoT Edge module (tests/test_azure_edge.py checks its manifest) ----------------------------


def test_iot_edge_module_runs_as_the_edge_agent_creates_it(built: Built, tmp_path: Path) -> None:
    """The manifest as the workflow applies it (its placeholders filled by envsubst), and its
    module's createOptions run on the Docker engine: the checks of every rendered container."""
    import os

    from .test_azure_edge import AZURE, synth, violations

    if shutil.which("envsubst") is None:
        require("envsubst (apt-get install gettext-base): fills a manifest's placeholders")
    folder = tmp_path / "azure"
    folder.mkdir()
    shutil.copyfile(AZURE / "mlops.yaml", folder / "mlops.yaml")
    shutil.copyfile(AZURE / "mlops.lock", folder / "mlops.lock")
    lock = yaml.safe_load((folder / "mlops.lock").read_text())
    assert lock["models"]["iris"]["versions"][1]["onnx"]["digest"] == built.onnx_digest  # the quickstart's model
    files = synth(folder, tmp_path / "stacks")
    env = {
        **os.environ,
        "MLOPS_IAC_API_KEY": KEY,
        "MLOPS_IAC_REGISTRY_USERNAME": "u",
        "MLOPS_IAC_REGISTRY_PASSWORD": "p",
    }
    names = "$MLOPS_IAC_API_KEY $MLOPS_IAC_REGISTRY_USERNAME $MLOPS_IAC_REGISTRY_PASSWORD"
    applied = subprocess.run(
        ["envsubst", names],
        input=files["plant-1.deployment.json"].read_text(),
        capture_output=True,
        text=True,
        env=env,
        check=True,
    ).stdout
    manifest = json.loads(applied)
    assert violations(manifest) == [] and "${" not in applied
    (module,) = manifest["modulesContent"]["$edgeAgent"]["properties.desired"]["modules"].values()
    binds = podrun.edge_create_options(module["settings"])["HostConfig"]["Binds"]
    volumes = {b.split(":")[0]: podrun.docker("volume", "create", f"wt-edge-{uuid.uuid4().hex[:8]}") for b in binds}
    run = podrun.edge_run(module, image=built.image, name=f"wt-edge-{uuid.uuid4().hex[:6]}", volumes=volumes)
    assert "--read-only" in run.argv and run.memory_limit == 256 * 2**20 and run.healthcheck
    settings = settings_of(run)
    assert settings["auth"] is True and run.env["MLOPS_IAC_API_KEY"] == KEY
    # No ServiceMonitor on a device: a Prometheus beside it scrapes the metrics listener.
    expect = Expect(
        label="plants (IoT Edge module)",
        settings=settings,
        scrape=(settings["metrics_port"], "/metrics", {}),
        memory_limit=run.memory_limit,
        target_rps=target_rps(AZURE, 1),
    )
    try:
        settle([(run, expect, exercise(run, expect, built))])
    finally:
        for created in volumes.values():
            podrun.docker("volume", "rm", "-f", created, check=False)
    assert auth_headers(settings)  # the key reached the server: unauthenticated requests got 401


# --- shadow traffic on a Docker host: two containers, the served one mirroring to the shadow ----

SHADOW_REQUESTS = 2000
SHADOW_PERCENT = 20


def shadow_on_docker(built: Built, tmp_path: Path, registry: OciRegistryServer, port: int) -> tuple[Path, str]:
    """The built quickstart with a version 2 (retrained with a stronger penalty), registered,
    converted, built and pushed, and a Docker target whose deployment mirrors to it."""
    import joblib
    from sklearn.datasets import load_iris

    folder = tmp_path / "quickstart"
    shutil.copytree(built.folder, folder, ignore=shutil.ignore_patterns("rendered-*", "stacks"))
    x, y = load_iris(return_X_y=True)
    model = joblib.load(folder / "model.joblib").set_params(logisticregression__C=0.1)
    joblib.dump(model.fit(x.astype(np.float32), y), folder / "model2.joblib")
    spec = folder / "mlops.yaml"
    text = spec.read_text().replace("targets:\n", f"targets:\n  box:\n    kind: docker\n    port: {port}\n", 1)
    spec.write_text(
        text.replace(
            "deployments:\n",
            "deployments:\n  - name: iris-box\n    model: iris\n    version: 1\n"
            f"    shadow: {{2: {SHADOW_PERCENT}}}\n    target: box\n"
            "    hardware: {cpu: 500m, memory: 256Mi}\n    auth: key\n",
            1,
        )
    )
    cli(folder, "register", "iris", "--file", "model2.joblib")
    cli(folder, "convert", "iris@2", "--no-speed")
    output = cli(folder, "build", "iris@2", "--push", f"{registry.address}/models")
    image = next(line.split()[1] for line in output.splitlines() if line.startswith("built "))
    return folder, image


def two_free_ports() -> int:
    """A port whose next one is free too: the target's port, for version 1 and the shadow."""
    import socket

    from .conftest import free_port

    for _ in range(50):
        port = free_port()
        with socket.socket() as probe:
            if probe.connect_ex(("127.0.0.1", port + 1)) != 0 and port + 1 <= 65535:
                return port
    raise AssertionError("no two free ports in a row")


@pytest.mark.timeout(900)  # with the session's build when it runs first: a second version is built here
def test_docker_shadow_container_gets_its_share_and_the_report_pairs_every_mirror(
    built: Built, tmp_path: Path, oci_registry: OciRegistryServer
) -> None:
    """The Docker target as `pulumi up` would run it (the generated program under Pulumi's mocks,
    its containers on the engine, on a network of their own): the served version answers as
    onnxruntime in process, mirrors exactly its share to the shadow's container, and the
    records it collected pair every mirror in `mlops-iac shadow report`."""
    from mlops_iac.convert.onnx_tools import run as ort_run
    from mlops_iac.convert.onnx_tools import session

    from .test_shadow import sample
    from .test_stack_program import run_generated

    port = two_free_ports()
    folder, image_2 = shadow_on_docker(built, tmp_path, oci_registry, port)
    cli(folder, "synth", "--target", "box", "--out", str(folder / "stacks"), "--no-contexts")
    mocks, _ = run_generated(folder / "stacks", "quickstart", "box")
    (network,) = mocks.of("docker:index/network:Network")
    created_network = podrun.docker("network", "create", f"wt-shadow-{uuid.uuid4().hex[:8]}")
    volumes = {
        v.inputs["name"]: podrun.docker("volume", "create", f"wt-shadow-{uuid.uuid4().hex[:8]}")
        for v in mocks.of("docker:index/volume:Volume")
    }
    runs: dict[str, ContainerRun] = {}
    try:
        for container in mocks.of("docker:index/container:Container"):
            version = next(x["value"] for x in container.inputs["labels"] if x["label"] == "dev.mlops-iac.version")
            runs[version] = podrun.container_run(
                container.inputs,
                image=built.image if version == "1" else image_2,
                name=f"wt-shadow-v{version}-{uuid.uuid4().hex[:6]}",
                volumes=volumes,
                networks={network.inputs["name"]: created_network},
            )
        assert sorted(runs) == ["1", "2"] and runs["1"].ports["8080"] == port and runs["2"].ports["8080"] == port + 1
        settings = settings_of(runs["1"])
        assert [m["version"] for m in settings["mirrors"]] == [2] and "mirrors" not in settings_of(runs["2"])
        for version in ("2", "1"):  # the shadow first: version 1 mirrors to it from its first request
            runs[version].start()
        for run in runs.values():
            wait_healthy(run)
        headers = {"Authorization": "Bearer s3cret"}  # the stack's mlops:apiKey under the mocks
        x = built.sample
        model_1 = session((folder / "build/iris-1/model/model.onnx").read_bytes())
        model_2 = session((folder / "build/iris-2/model/model.onnx").read_bytes())
        expected = [ort_run(model_1, x[i : i + 1])[:2] for i in range(len(x))]
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
        for n in range(SHADOW_REQUESTS):
            i = n % len(x)
            doc: dict[str, Any] = {
                "inputs": [{"name": "input", "datatype": "FP32", "shape": [1, 4], "data": x[i].tolist()}]
            }
            if n % 2 == 0:
                doc["id"] = f"req-{n}"  # half name themselves; the server keys the others' records itself
            conn.request(
                "POST", "/v2/models/iris/infer", json.dumps(doc), {"Content-Type": "application/json", **headers}
            )
            response = conn.getresponse()
            answer = json.loads(response.read())
            assert response.status == 200 and answer["model_version"] == "1", answer  # never the shadow's
            outputs = {o["name"]: np.asarray(o["data"]) for o in answer["outputs"]}
            assert outputs["label"].tolist() == expected[i][0].ravel().tolist()
            np.testing.assert_allclose(outputs["probabilities"], expected[i][1].ravel(), rtol=1e-6, atol=1e-7)
            assert answer.get("id") == doc.get("id")
        conn.close()
        share = SHADOW_REQUESTS * SHADOW_PERCENT // 100
        deadline = time.monotonic() + 60  # the mirror works in bursts after the answers: let it finish
        while time.monotonic() < deadline:
            primary = get(port, "/metrics", headers)[1].decode()
            if sample(primary, "mlops_shadow_mirrored_total", version="2") >= share:
                break
            time.sleep(0.5)
        shadow = get(port + 1, "/metrics", headers)[1].decode()
        assert sample(primary, "mlops_shadow_mirrored_total", model="iris", version="2") == share, primary
        assert sample(primary, "mlops_shadow_dropped_total") == 0
        # exactly its share reached the shadow's container
        assert sample(shadow, "mlops_requests_total", model="iris", version="2", status="200") == share
        podrun.docker("stop", runs["1"].name, timeout=60)  # SIGTERM: the collector writes what it holds
        collected = tmp_path / "collected"
        podrun.docker("cp", f"{runs['1'].name}:/data/collected", str(collected))
    finally:
        for run in runs.values():
            podrun.docker("rm", "-f", run.name, check=False)
        for created in volumes.values():
            podrun.docker("volume", "rm", "-f", created, check=False)
        podrun.docker("network", "rm", created_network, check=False)
    records = [json.loads(line) for f in collected.rglob("requests.jsonl*") for line in f.read_text().splitlines()]
    mirrored = {r["id"]: r for r in records if r.get("mirrored")}
    shadows = {r["id"]: r for r in records if r.get("shadow")}
    assert len(mirrored) == len(shadows) == share and set(mirrored) == set(shadows)
    # a client's id is kept; a request without one gets one the answer never shows
    sent = {f"req-{n}" for n in range(0, SHADOW_REQUESTS, 2)}
    assert all(rid in sent or re.fullmatch(r"[0-9a-f]{32}", rid) for rid in mirrored)
    for rid, record in shadows.items():  # version 2's answers, from its own container, on the request mirrored
        assert record["version"] == "2" and "error" not in record
        rows = np.asarray(mirrored[rid]["inputs"]["input"], np.float32)
        label, probabilities = ort_run(model_2, rows)[:2]
        assert record["outputs"]["label"] == label.ravel().tolist()
        np.testing.assert_allclose(record["outputs"]["probabilities"], probabilities.ravel(), rtol=1e-6, atol=1e-7)
    report = cli(folder, "shadow", "report", "iris-box", "--collected", str(collected), "--out", str(tmp_path / "r"))
    assert (
        f"{share} mirrored requests paired by request id (0 failed in the shadow); unpaired: 0 primary, 0 shadow"
        in (report)
    )
    REPORT.append(f"- docker shadow: {share} of {SHADOW_REQUESTS} mirrored to v2's container, every one paired")
