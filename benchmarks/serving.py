"""Serving speed, everything in one run on the same cores, one server at a time.

    pip install -e '.[bench]'   # the minimal Starlette reference, scikit-learn for the model
    python benchmarks/serving.py [--duration 5] [--no-peers] [--model rf|mlp|iris]
                                 [--baseline DIR] [--workers 2] [--grpc]

Measures, on the same ONNX model (default: a RandomForest,
100 trees of depth 10 on 20 synthetic features):
  - bare in-process `session.run` at batch 1 and batch 32 (the floor);
  - a minimal reference v2 server (a few lines of Starlette on uvicorn with uvloop,
    httptools and orjson);
  - the mlops-iac server, without and with dynamic batching;
  - MLServer and BentoML serving the same model with their recommended setup (a custom
    onnxruntime runtime for MLServer; a `@bentoml.service` for BentoML), each in its own
    virtual environment under $MLOPS_IAC_PEERS (default /tmp/mlops-iac-peers), made on the
    first run from PyPI; and KServe's Python model server (a `kserve.Model`) the same way.
    A peer that does not install or start is left out with the reason printed;
  - with --workers N, the mlops-iac server with N worker processes;
  - with --baseline DIR, the server of another mlops-iac checkout (an A/B of a change);
  - with --grpc, then gRPC against REST on our server at the same concurrencies, through
    tritonclient's asyncio clients (benchmarks/serving_grpc.py: wrk speaks no gRPC);
  - with --pin, the reference and our servers pinned to the first core (N workers: the first
    N), wrk to the cores after them: a quieter comparison on a shared machine (peers unpinned);
  - with --scaling 1,2,4, core scaling: our server with N workers pinned to N cores, wrk
    (two threads, 32 connections per worker) pinned to the cores left, against N times the
    one-core figure (the goal is 0.85 N); needs more cores than the largest N;
driven by wrk (one thread, keep-alive) at concurrency 1, 8 and 32, in interleaved rounds.
Prints requests per second, p50 and p99, and the ratios the goals are stated in (the
tiny-model goals with the default `rf`; the 150 us goals with `--model mlp`).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from mlops_iac.profile.load import free_port, wait_ready

PEERS = Path(os.environ.get("MLOPS_IAC_PEERS", "/tmp/mlops-iac-peers"))
CONCURRENCY = (1, 8, 32)


@dataclass
class Result:
    name: str
    concurrency: int
    rps: float
    p50_us: float
    p99_us: float
    cpu_us: float  # the server's CPU time (all its processes and threads) per request


def build_model(kind: str, folder: Path) -> tuple[Path, np.ndarray]:
    import joblib
    from sklearn.datasets import load_iris, make_classification
    from sklearn.ensemble import RandomForestClassifier
    from sklearn.linear_model import LogisticRegression

    from mlops_iac.convert import Options, convert_artifact

    if kind == "rf":
        x, y = make_classification(5000, 20, random_state=0)
        model = RandomForestClassifier(100, max_depth=10, random_state=0, n_jobs=1).fit(x, y)
    elif kind == "mlp":  # about 0.1-0.2 ms per call at batch 1: where batching should pay
        from sklearn.neural_network import MLPClassifier

        x, y = make_classification(2000, 256, random_state=0)
        model = MLPClassifier((1024, 1024), max_iter=3, random_state=0).fit(x, y)
    else:
        x, y = load_iris(return_X_y=True)
        model = LogisticRegression(max_iter=500).fit(x, y)
    x = x.astype(np.float32)
    joblib.dump(model, folder / "model.joblib")
    report = convert_artifact("sklearn", folder / "model.joblib", x[:64], Options(measure_speed=False))
    path = folder / "model.onnx"
    path.write_bytes(report.model)
    return path, x


def in_process(path: Path, x: np.ndarray) -> dict[str, float]:
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    sess = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    out = {}
    for batch in (1, 32):
        feed = {"input": np.ascontiguousarray(x[:batch])}
        for _ in range(200):
            sess.run(None, feed)
        samples = []
        for _ in range(2000):
            start = time.perf_counter_ns()
            sess.run(None, feed)
            samples.append(time.perf_counter_ns() - start)
        out[f"batch{batch}_us"] = statistics.median(samples) / 1000
    return out


MINIMAL = """
import numpy as np, onnxruntime as ort, orjson
from starlette.applications import Starlette
from starlette.responses import Response
from starlette.routing import Route
options = ort.SessionOptions(); options.intra_op_num_threads = 1
sess = ort.InferenceSession({path!r}, options, providers=["CPUExecutionProvider"])
names = [o.name for o in sess.get_outputs()]
async def infer(request):
    doc = orjson.loads(await request.body())
    t = doc["inputs"][0]
    x = np.asarray(t["data"], dtype=np.float32).reshape(t["shape"])
    outs = sess.run(None, {{"input": x}})
    body = {{"model_name": "m", "outputs": [{{"name": n, "datatype": "FP32", "shape": list(o.shape),
             "data": o.ravel()}} for n, o in zip(names, outs)]}}
    return Response(orjson.dumps(body, option=orjson.OPT_SERIALIZE_NUMPY), media_type="application/json")
async def ready(request):
    return Response(b"{{}}", media_type="application/json")
app = Starlette(routes=[Route("/v2/models/m/infer", infer, methods=["POST"]),
                        Route("/v2/health/ready", ready)])
"""

MLSERVER_RUNTIME = """
import numpy as np, onnxruntime as ort
from mlserver import MLModel
from mlserver.codecs import NumpyCodec
from mlserver.types import InferenceRequest, InferenceResponse

class OnnxRuntime(MLModel):
    async def load(self) -> bool:
        options = ort.SessionOptions(); options.intra_op_num_threads = 1
        self.sess = ort.InferenceSession(self.settings.parameters.uri, options,
                                         providers=["CPUExecutionProvider"])
        self.names = [o.name for o in self.sess.get_outputs()]
        return True

    async def predict(self, payload: InferenceRequest) -> InferenceResponse:
        x = NumpyCodec.decode_input(payload.inputs[0]).astype(np.float32)
        outs = self.sess.run(None, {"input": x})
        return InferenceResponse(model_name=self.name, outputs=[
            NumpyCodec.encode_output(n, np.asarray(o, dtype=np.float32)) for n, o in zip(self.names, outs)])
"""

BENTO_SERVICE = """
import numpy as np, onnxruntime as ort, bentoml

@bentoml.service(workers=1)
class Model:
    def __init__(self) -> None:
        options = ort.SessionOptions(); options.intra_op_num_threads = 1
        self.sess = ort.InferenceSession({path!r}, options, providers=["CPUExecutionProvider"])

    @bentoml.api
    def predict(self, x: np.ndarray) -> np.ndarray:
        return self.sess.run(None, {{"input": x.astype(np.float32)}})[1]
"""

KSERVE_MODEL = """
import sys
import numpy as np, onnxruntime as ort
from kserve import InferOutput, InferResponse, Model, ModelServer

class OnnxModel(Model):
    def __init__(self) -> None:
        super().__init__("m")
        options = ort.SessionOptions(); options.intra_op_num_threads = 1
        self.sess = ort.InferenceSession({path!r}, options, providers=["CPUExecutionProvider"])
        self.names = [o.name for o in self.sess.get_outputs()]
        self.ready = True

    def predict(self, payload, headers=None):
        x = payload.inputs[0].as_numpy().astype(np.float32)
        outs = self.sess.run(None, {{"input": x}})
        outputs = []
        for n, o in zip(self.names, outs):
            out = InferOutput(name=n, shape=list(o.shape), datatype="FP32")
            out.set_data_from_numpy(np.asarray(o, dtype=np.float32), binary_data=False)
            outputs.append(out)
        return InferResponse(response_id=payload.id or "", model_name=self.name, infer_outputs=outputs)

if __name__ == "__main__":
    ModelServer(http_port=int(sys.argv[1]), grpc_port=int(sys.argv[2]), enable_grpc=False,
                workers=1).start([OnnxModel()])
"""


def peer_python(name: str, packages: list[str]) -> Path | None:
    """The Python of a virtual environment holding a peer (made once; None if it cannot be)."""
    venv = PEERS / name
    python = venv / "bin" / "python"
    marker = venv / ".installed"
    if not marker.exists():
        shutil.rmtree(venv, ignore_errors=True)
        subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
        done = subprocess.run([str(python), "-m", "pip", "install", "-q", *packages], capture_output=True, text=True)
        if done.returncode != 0:
            print(f"({name}: install failed, left out: {done.stderr.strip()[-300:]})")
            return None
        marker.write_text("ok")
    return python


def cpu_seconds(session: int) -> float:
    """CPU time of every process in a session (a server and its workers): unlike requests per
    second it barely moves when other work shares the cores, so it shows what a change costs."""
    ticks = 0
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:  # the process ended meanwhile
            continue
        if int(fields[3]) == session:  # fields after the name: state, ppid, pgrp, session, ...
            ticks += int(fields[11]) + int(fields[12])  # utime, stime
    return ticks / os.sysconf("SC_CLK_TCK")


def wrk(
    url: str,
    body: bytes,
    concurrency: int,
    duration: int,
    folder: Path,
    threads: int = 1,
    cpus: set[int] | None = None,
) -> tuple[float, float, float, int]:
    script = folder / "post.lua"
    script.write_text(
        'wrk.method = "POST"\nwrk.headers["Content-Type"] = "application/json"\n'
        f"wrk.body = {json.dumps(body.decode())}\n"
    )
    out = subprocess.run(
        ["wrk", f"-t{threads}", f"-c{concurrency}", f"-d{duration}s", "--latency", "-s", str(script), url],
        capture_output=True,
        text=True,
        check=True,
        preexec_fn=_pinned(cpus),
    ).stdout
    if "Non-2xx" in out:
        raise RuntimeError(f"{url} answered errors under load:\n{out}")
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))  # type: ignore[union-attr]
    done = int(re.search(r"(\d+) requests in", out).group(1))  # type: ignore[union-attr]
    return rps, _percentile(out, "50%"), _percentile(out, "99%"), done


def _pinned(cpus: set[int] | None) -> Callable[[], None] | None:
    """A child's start-up step that keeps it (and the processes it starts) on `cpus`."""
    if cpus is None:
        return None
    return lambda: os.sched_setaffinity(0, cpus)


def _percentile(text: str, which: str) -> float:
    value, unit = re.search(rf"{which}\s+([\d.]+)(us|ms|s)", text).groups()  # type: ignore[union-attr]
    return float(value) * {"us": 1, "ms": 1000, "s": 1_000_000}[unit]


@dataclass
class Target:
    name: str
    url: str
    body: bytes
    process: subprocess.Popen[bytes]


def start(
    name: str,
    command: list[str],
    ready: str,
    url: str,
    body: bytes,
    folder: Path,
    cwd: Path | None = None,
    env: dict[str, str] | None = None,
    cpus: set[int] | None = None,
) -> Target:
    with open(folder / f"{name.split()[0]}-{len(name)}.log", "wb") as log:
        process = subprocess.Popen(
            command,
            stdout=log,
            stderr=subprocess.STDOUT,
            cwd=cwd,
            env={**os.environ, **(env or {})},
            start_new_session=True,
            preexec_fn=_pinned(cpus),
        )
    target = Target(name, url, body, process)
    try:
        _check(ready, url, body, process)
    except BaseException:  # a server that did not come up is not left running
        stop(target)
        raise
    return target


def _check(ready: str, url: str, body: bytes, process: subprocess.Popen[bytes]) -> None:
    wait_ready(ready, process)
    check = urllib.request.Request(url, data=body, headers={"Content-Type": "application/json"})
    deadline = time.monotonic() + 60
    answered = 0
    while answered < 20:  # on new connections: with workers, each loads on its own
        try:
            with urllib.request.urlopen(check, timeout=10) as response:
                assert response.status == 200
                answered += 1
        except urllib.error.HTTPError as exc:
            if exc.code != 503 or time.monotonic() > deadline:
                raise
            answered = 0
            time.sleep(0.2)


def stop(target: Target) -> None:
    try:
        os.killpg(target.process.pid, signal.SIGTERM)
    except ProcessLookupError:  # it exited on its own (failed to start): its log says why
        return
    try:
        target.process.wait(15)
    except subprocess.TimeoutExpired:  # MLServer's worker pool can hang on shutdown
        os.killpg(target.process.pid, signal.SIGKILL)
        target.process.wait(15)


def measure(
    targets: list[Target], rounds: int, duration: int, folder: Path, load: set[int] | None = None
) -> list[Result]:
    """Interleaved rounds (A B C, A B C, ...): the machine's noise hits every server alike."""
    samples: dict[tuple[str, int], list[tuple[float, float, float, float]]] = {}
    for target in targets:
        wrk(target.url, target.body, 8, 1, folder, cpus=load)  # warm-up
    for _ in range(rounds):
        for c in CONCURRENCY:
            for target in targets:
                before = cpu_seconds(target.process.pid)
                rps, p50, p99, done = wrk(target.url, target.body, c, duration, folder, cpus=load)
                cpu_us = (cpu_seconds(target.process.pid) - before) * 1e6 / max(done, 1)
                samples.setdefault((target.name, c), []).append((rps, p50, p99, cpu_us))
    return [
        Result(name, c, *(statistics.median(s[i] for s in runs) for i in range(4)))
        for (name, c), runs in samples.items()
    ]


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--duration", type=int, default=3, help="seconds per wrk run")
    parser.add_argument("--rounds", type=int, default=3, help="interleaved rounds; medians are reported")
    parser.add_argument("--model", choices=["rf", "mlp", "iris"], default="rf")
    parser.add_argument("--no-peers", action="store_true")
    parser.add_argument("--workers", type=int, default=0, help="also measure the server with N workers")
    parser.add_argument("--baseline", type=Path, help="another mlops-iac checkout, measured as 'baseline'")
    parser.add_argument("--pin", action="store_true", help="servers on the first cores, wrk on the others")
    parser.add_argument("--scaling", default="", help="core scaling: worker counts, e.g. 1,2,4 (each pinned)")
    parser.add_argument(
        "--grpc",
        action="store_true",
        help="then gRPC against REST on our server, same model (benchmarks/serving_grpc.py)",
    )
    args = parser.parse_args()
    if shutil.which("wrk") is None:
        sys.exit("wrk is needed: apt-get install wrk")
    folder = Path(tempfile.mkdtemp(prefix="mlops-bench-"))
    path, x = build_model(args.model, folder)
    bare = in_process(path, x)
    row = x[:1]
    v2 = json.dumps(
        {"inputs": [{"name": "input", "datatype": "FP32", "shape": [1, row.shape[1]], "data": row.ravel().tolist()}]}
    ).encode()
    targets: list[Target] = []
    available = sorted(os.sched_getaffinity(0))
    widest = max(1, args.workers)
    if args.pin and len(available) <= widest:
        sys.exit(f"--pin needs more than {widest} cores (the servers', then wrk's); this machine has {len(available)}")

    def pinned(n: int) -> set[int] | None:
        return set(available[:n]) if args.pin else None

    try:
        (folder / "minimal.py").write_text(MINIMAL.format(path=str(path)))
        port = free_port()
        targets.append(
            start(
                "minimal reference",
                [
                    sys.executable,
                    "-m",
                    "uvicorn",
                    "minimal:app",
                    "--port",
                    str(port),
                    "--loop",
                    "uvloop",
                    "--http",
                    "httptools",
                    "--log-level",
                    "warning",
                    "--no-access-log",
                ],
                f"http://127.0.0.1:{port}/v2/health/ready",
                f"http://127.0.0.1:{port}/v2/models/m/infer",
                v2,
                folder,
                cwd=folder,
                cpus=pinned(1),
            )
        )
        ours: list[tuple[str, dict[str, object], dict[str, str]]] = [
            ("mlops-iac", {}, {}),
            ("mlops-iac batching", {"max_batch_size": 32, "max_delay_ms": 0}, {}),
        ]
        if args.workers > 1:
            ours.append((f"mlops-iac {args.workers} workers", {"workers": args.workers}, {}))
        if args.baseline is not None:
            ours.append(("baseline", {}, {"PYTHONPATH": str(args.baseline.resolve())}))
        for name, settings_extra, env in ours:
            n = int(settings_extra.get("workers", 1))  # type: ignore[call-overload]
            targets.append(start_ours(name, settings_extra, env, v2, folder, cpus=pinned(n)))
        if not args.no_peers:
            targets += peers(path, v2, row, folder)
        load = set(available[widest:]) if args.pin else None
        results = measure(targets, args.rounds, args.duration, folder, load)
    finally:
        for target in targets:
            stop(target)
    report(results, bare, args.model)
    if args.scaling:
        scaling([int(n) for n in args.scaling.split(",")], args.rounds, args.duration, v2, folder)
    if args.grpc:  # a Python client on both protocols: wrk speaks no gRPC
        subprocess.run(
            [
                sys.executable,
                str(Path(__file__).with_name("serving_grpc.py")),
                "--model",
                args.model,
                "--rounds",
                str(args.rounds),
                "--seconds",
                str(args.duration),
            ],
            check=True,
        )


def scaling(counts: list[int], rounds: int, duration: int, v2: bytes, folder: Path) -> None:
    """Our server with N workers on N cores against N times its one-core figure. wrk runs on
    the other cores, so the load generator never takes the server's; rounds alternate the
    counts, and medians are compared."""
    available = sorted(os.sched_getaffinity(0))
    counts = sorted(set(counts) | {1})
    if len(available) < max(counts) + 2:
        print(f"core scaling needs {max(counts) + 2} cores (wrk takes two); this machine has {len(available)}")
        return
    samples: dict[int, list[float]] = {n: [] for n in counts}
    for _ in range(rounds):
        for n in counts:
            server, load = set(available[:n]), set(available[n:])
            target = start_ours(f"scaling {n}", {"workers": n}, {}, v2, folder, cpus=server)
            try:
                wrk(target.url, target.body, 8 * n, 1, folder, threads=2, cpus=load)  # warm-up
                rps = wrk(target.url, target.body, 32 * n, duration, folder, threads=2, cpus=load)[0]
            finally:
                stop(target)
            samples[n].append(rps)
    one = statistics.median(samples[1])
    print(f"core scaling (N workers pinned to N cores, wrk on the other {len(available) - max(counts)}+ cores):")
    for n in counts:
        rps = statistics.median(samples[n])
        ratio = rps / one
        met = "met" if ratio >= 0.85 * n else "NOT met"
        print(
            f"  {n:>2} cores: {rps:>9,.0f} req/s, {ratio:5.2f}x one core "
            f"(goal >= {0.85 * n:.2f}x) {met}   rounds: " + ", ".join(f"{r:,.0f}" for r in samples[n])
        )


def start_ours(
    name: str, extra: dict[str, object], env: dict[str, str], v2: bytes, folder: Path, cpus: set[int] | None = None
) -> Target:
    model: dict[str, object] = {"name": "m", "version": 1, "path": "model.onnx"}
    server: dict[str, object] = {"models": [model]}
    for key, value in extra.items():
        (server if key == "workers" else model)[key] = value
    settings = folder / f"server-{name.replace(' ', '-')}.json"
    settings.write_text(json.dumps(server))
    port = free_port()
    return start(
        name,
        [
            *_server_command(env.get("PYTHONPATH")),
            "--config",
            str(settings),
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
        ],
        f"http://127.0.0.1:{port}/v2/health/ready",
        f"http://127.0.0.1:{port}/v2/models/m/infer",
        v2,
        folder,
        env=env,
        cpus=cpus,
    )


def _server_command(checkout: str | None) -> list[str]:
    """`python -m mlops_iac.serving`, from `checkout` when given: an editable install's import
    hook comes before PYTHONPATH, so the baseline's own tree is put first explicitly."""
    if checkout is None:
        return [sys.executable, "-m", "mlops_iac.serving"]
    code = (
        "import runpy, sys; "
        "sys.meta_path = [f for f in sys.meta_path if 'editable' not in repr(f).lower()]; "
        f"sys.path.insert(0, {checkout!r}); "
        "runpy.run_module('mlops_iac.serving', run_name='__main__', alter_sys=True)"
    )
    return [sys.executable, "-c", code]


def peers(path: Path, v2: bytes, row: np.ndarray, folder: Path) -> list[Target]:
    """MLServer, BentoML and KServe; one that does not install or start is left out, with why."""
    targets: list[Target] = []
    for name, begin in (("MLServer", _mlserver), ("BentoML", _bentoml), ("KServe", _kserve)):
        try:
            target = begin(path, v2, row, folder)
        except Exception as exc:  # a peer's failure must not cost the rest of the run
            print(f"({name}: did not start, left out: {type(exc).__name__}: {str(exc)[:300]})")
            continue
        if target is not None:
            targets.append(target)
    return targets


def _mlserver(path: Path, v2: bytes, row: np.ndarray, folder: Path) -> Target | None:
    # MLServer 1.7 workers call asyncio.get_event_loop(), which uvloop 0.22 and later refuse.
    python = peer_python("mlserver", ["mlserver", "onnxruntime", "numpy", "uvloop<0.22"])
    if python is None:
        return None
    models = folder / "mlserver"
    (models / "m").mkdir(parents=True)
    (models / "m" / "runtime.py").write_text(MLSERVER_RUNTIME)
    (models / "m" / "model-settings.json").write_text(
        json.dumps({"name": "m", "implementation": "runtime.OnnxRuntime", "parameters": {"uri": str(path)}})
    )
    http, grpc, metrics = free_port(), free_port(), free_port()
    (models / "settings.json").write_text(
        json.dumps({"http_port": http, "grpc_port": grpc, "metrics_port": metrics, "debug": False})
    )
    return start(
        "MLServer",
        [str(python.parent / "mlserver"), "start", str(models)],
        f"http://127.0.0.1:{http}/v2/health/ready",
        f"http://127.0.0.1:{http}/v2/models/m/infer",
        v2,
        folder,
        cwd=models / "m",
    )


def _bentoml(path: Path, v2: bytes, row: np.ndarray, folder: Path) -> Target | None:
    python = peer_python("bentoml", ["bentoml", "onnxruntime", "numpy"])
    if python is None:
        return None
    service = folder / "bento"
    service.mkdir()
    (service / "service.py").write_text(BENTO_SERVICE.format(path=str(path)))
    port = free_port()
    body = json.dumps({"x": row.tolist()}).encode()
    return start(
        "BentoML",
        [str(python.parent / "bentoml"), "serve", "service:Model", "--port", str(port)],
        f"http://127.0.0.1:{port}/readyz",
        f"http://127.0.0.1:{port}/predict",
        body,
        folder,
        cwd=service,
        env={"BENTOML_DO_NOT_TRACK": "true"},
    )


def _kserve(path: Path, v2: bytes, row: np.ndarray, folder: Path) -> Target | None:
    python = peer_python("kserve", ["kserve", "onnxruntime", "numpy"])
    if python is None:
        return None
    (folder / "kserve_model.py").write_text(KSERVE_MODEL.format(path=str(path)))
    http, grpc = free_port(), free_port()
    return start(
        "KServe",
        [str(python), str(folder / "kserve_model.py"), str(http), str(grpc)],
        f"http://127.0.0.1:{http}/v2/health/ready",
        f"http://127.0.0.1:{http}/v2/models/m/infer",
        v2,
        folder,
        cwd=folder,
    )


PEERS_SHOWN = ("MLServer", "BentoML", "KServe")


def report(results: list[Result], bare: dict[str, float], model: str) -> None:
    print(
        f"in-process session.run, 1 thread: batch 1 {bare['batch1_us']:.1f} us "
        f"({1e6 / bare['batch1_us']:,.0f} calls/s); batch 32 {bare['batch32_us']:.1f} us"
    )
    print(
        f"{'server':22} {'conc':>4} {'req/s':>9} {'p50 us':>9} {'p99 us':>9} {'CPU us/req':>10}"
        "   (medians of interleaved rounds)"
    )
    for r in sorted(results, key=lambda r: (r.name, r.concurrency)):
        cpu = f"{r.cpu_us:>10.1f}" if r.cpu_us else f"{'-':>10}"  # BentoML's workers leave the session
        print(f"{r.name:22} {r.concurrency:>4} {r.rps:>9,.0f} {r.p50_us:>9.0f} {r.p99_us:>9.0f} {cpu}")
    by = {(r.name, r.concurrency): r for r in results}
    print("ratios (mlops-iac requests per second over ...):")
    others = ["minimal reference", "baseline", *PEERS_SHOWN]
    for c in CONCURRENCY:
        ours = by[("mlops-iac", c)]
        parts = [f"{other} {ours.rps / by[(other, c)].rps:.2f}x" for other in others if (other, c) in by]
        print(f"  concurrency {c:>2}: " + ", ".join(parts))
    print("CPU per request (the server's, over mlops-iac's; lower is cheaper, robust to noise):")
    for c in CONCURRENCY:
        ours = by[("mlops-iac", c)]
        parts = [
            f"{name} {by[(name, c)].cpu_us / ours.cpu_us:.2f}x"
            for name in sorted({n for n, _ in by})
            if name != "mlops-iac" and (name, c) in by and by[(name, c)].cpu_us
        ]
        print(f"  concurrency {c:>2}: " + ", ".join(parts))
    goals(by, bare, model)


def goals(by: dict[tuple[str, int], Result], bare: dict[str, float], model: str) -> None:
    """The server-speed goals, each as measured here against its target."""

    def line(what: str, value: float, target: float, unit: str = "x", lower: bool = False) -> None:
        met = value <= target if lower else value >= target
        print(
            f"  {what:62} {value:7.2f}{unit} (goal {'<=' if lower else '>='} {target:g}{unit}) "
            f"{'met' if met else 'NOT met'}"
        )

    def rps(name: str, c: int) -> float:
        return by[(name, c)].rps

    print(f"goals (model {model}; the tiny-model goals apply to rf and iris, the 150 us ones to mlp):")
    floor = 1.8 if model != "mlp" else 1.3
    for c in (8, 32):  # the best of our configurations (one worker, batching, workers) at c
        best = max((name for name, at in by if name.startswith("mlops-iac") and at == c), key=lambda name: rps(name, c))
        line(f"{best} over minimal reference, concurrency {c}", rps(best, c) / rps("minimal reference", c), floor)
    line(
        "added median latency at concurrency 1 over bare session.run",
        by[("mlops-iac", 1)].p50_us - bare["batch1_us"],
        80,
        " us",
        lower=True,
    )
    line("batching over unbatched, concurrency 1", rps("mlops-iac batching", 1) / rps("mlops-iac", 1), 0.97)
    if model == "mlp":
        line("batching over unbatched, concurrency 32", rps("mlops-iac batching", 32) / rps("mlops-iac", 32), 1.5)
    for name, _ in by:
        if name.endswith(" workers") and _ == 32:
            n = int(name.split()[1])
            line(
                f"{name} over 1 worker, concurrency 32 (cores: {os.cpu_count()})",
                rps(name, 32) / rps("mlops-iac", 32),
                0.85 * n,
            )


if __name__ == "__main__":
    main()
