from __future__ import annotations

import json
from pathlib import Path

from click.testing import CliRunner

from mlops_iac.cli import main
from mlops_iac.serving.config import ServerConfig


def test_serve_settings_come_from_the_lock(converted: Path) -> None:
    result = CliRunner().invoke(main, ["serve", "--write-config", "server.json"])
    assert result.exit_code == 0, result.output
    config = ServerConfig.model_validate_json((converted / "server.json").read_text())
    (model,) = config.models
    lock_digest = json.loads(CliRunner().invoke(main, ["lock", "show", "--json"]).output)["models"]["iris"]["versions"][
        "1"
    ]["onnx"]["digest"]
    assert (model.name, model.version, model.digest) == ("iris", 1, lock_digest)
    assert (converted / model.path).exists() and model.path.startswith(".mlops/serve/")
    assert config.collection.enabled and config.collection.sample_rate == 1.0
    assert config.collection.sink == "file" and config.deployment == "iris-local"


def test_serve_adhoc_refs_and_errors(converted: Path) -> None:
    runner = CliRunner()
    adhoc = runner.invoke(main, ["serve", "iris@1", "--write-config", "adhoc.json"])
    assert adhoc.exit_code == 0, adhoc.output
    assert ServerConfig.model_validate_json((converted / "adhoc.json").read_text()).models[0].version == 1
    unknown = runner.invoke(main, ["serve", "--deployment", "nope"])
    assert unknown.exit_code == 1 and "unknown deployment(s) nope" in unknown.output
    (converted / "v2.joblib").write_bytes((converted / "model.joblib").read_bytes() + b"\0")
    registered = runner.invoke(main, ["register", "iris", "--file", "v2.joblib"])
    assert registered.exit_code == 0, registered.output
    missing = runner.invoke(main, ["serve", "iris@2", "--write-config", "x.json"])
    assert missing.exit_code == 1 and "run `mlops-iac convert iris@2` first" in missing.output


def test_serve_flags_set_the_connection_limits(converted: Path) -> None:
    flags = ["--header-timeout", "2", "--body-timeout", "5", "--max-connections", "300"]
    result = CliRunner().invoke(main, ["serve", *flags, "--write-config", "limits.json"])
    assert result.exit_code == 0, result.output
    config = ServerConfig.model_validate_json((converted / "limits.json").read_text())
    assert (config.header_timeout_s, config.body_timeout_s, config.max_connections) == (2.0, 5.0, 300)
    refused = CliRunner().invoke(main, ["serve", "--header-timeout", "0", "--write-config", "x.json"])
    assert refused.exit_code == 2 and "--header-timeout" in refused.output


def test_quickstart_client_stops_waiting_when_the_server_has_exited() -> None:
    """run.sh passes the server's PID to predict.py: a server that died (a busy port) ends the
    wait at once, with a reason, instead of a minute of polling a port nobody serves."""
    import subprocess
    import sys
    import time

    from .conftest import QUICKSTART, free_port

    url = f"http://127.0.0.1:{free_port()}"
    for reap in (True, False):  # exited and reaped, or exited and still a zombie of its parent
        gone = subprocess.Popen(["true"])
        if reap:
            gone.wait()
        else:  # not polled (that would reap it): wait until the kernel shows it as a zombie
            stat = Path(f"/proc/{gone.pid}/stat")
            while stat.read_text().rsplit(")", 1)[1].split()[0] != "Z":
                time.sleep(0.01)
        done = subprocess.run(
            [sys.executable, str(QUICKSTART / "predict.py"), url, "--pid", str(gone.pid)],
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert done.returncode == 1
        assert f"the server (process {gone.pid}) exited before it became ready" in done.stderr
        gone.wait()


def test_serve_with_grpc_answers_over_grpc(converted: Path) -> None:
    """`mlops-iac serve --grpc-port` as a user runs it: the CLI's own process serves REST and,
    on the given port, gRPC answers equal to onnxruntime in process on the quickstart's sample."""
    import os
    import signal
    import subprocess
    import sys

    import numpy as np
    import onnxruntime as ort
    import tritonclient.grpc as grpcclient

    from .conftest import free_port, wait_http

    http, grpc = free_port(), free_port()
    written = CliRunner().invoke(main, ["serve", "--grpc-port", str(grpc), "--write-config", "grpc.json"])
    assert written.exit_code == 0, written.output
    assert ServerConfig.model_validate_json((converted / "grpc.json").read_text()).grpc_port == grpc
    cli = [sys.executable, "-m", "mlops_iac", "serve", "--port", str(http), "--grpc-port", str(grpc)]
    process = subprocess.Popen(
        cli,
        cwd=converted,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )
    try:
        wait_http(f"http://127.0.0.1:{http}/v2/health/ready", timeout=60)
        x = np.load(converted / "sample.npy").astype(np.float32)[:3]
        tensor = grpcclient.InferInput("input", list(x.shape), "FP32")
        tensor.set_data_from_numpy(x)
        with grpcclient.InferenceServerClient(f"127.0.0.1:{grpc}") as client:
            answer = client.infer("iris", [tensor])
        model = next((converted / ".mlops" / "serve").glob("*.onnx"))
        label, probabilities = ort.InferenceSession(str(model)).run(None, {"input": x})
        assert answer.as_numpy("label").tolist() == label.tolist()
        np.testing.assert_allclose(answer.as_numpy("probabilities"), probabilities, rtol=1e-6, atol=1e-7)
    finally:
        process.send_signal(signal.SIGTERM)
        output = process.communicate(timeout=60)[0].decode()
    assert f"gRPC on 127.0.0.1:{grpc}" in output and "Traceback" not in output
