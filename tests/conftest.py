from __future__ import annotations

import asyncio
import importlib
import os
import shutil
import socket
import subprocess
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parents[1]
QUICKSTART = ROOT / "examples" / "quickstart"


def _repository_status() -> str | None:
    done = subprocess.run(
        ["git", "-C", str(ROOT), "status", "--porcelain", "--untracked-files=all"], capture_output=True, text=True
    )
    return done.stdout if done.returncode == 0 else None


@pytest.fixture(autouse=True)
def current_event_loop() -> Iterator[None]:
    """Every test starts with a current event loop in the main thread, as a fresh `pulumi up`
    process has: Pulumi's mocks look it up, and a test before that ran `asyncio.run` (which
    leaves none) must not decide whether a later one passes."""
    try:
        asyncio.get_event_loop_policy().get_event_loop()
    except RuntimeError:
        asyncio.set_event_loop(asyncio.new_event_loop())
    yield


@pytest.fixture(scope="session", autouse=True)
def repository_untouched() -> Iterator[None]:
    """Tests write under tmp_path, never into the repository (a stray file once got committed):
    the checkout's `git status` is the same after the session as before it."""
    before = _repository_status()
    yield
    after = _repository_status()
    if before is not None and after != before:
        pytest.fail(f"the tests changed the repository's working tree (git status before:\n{before}\nafter:\n{after})")


@pytest.fixture
def project(tmp_path: Path) -> Path:
    """A folder with the artifacts that test files name (contents do not matter to the spec)."""
    (tmp_path / "model.joblib").write_bytes(b"not a real model")
    (tmp_path / "sample.npy").write_bytes(b"")
    return tmp_path


@pytest.fixture
def quickstart(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A copy of the quickstart with its model trained, as the working directory."""
    import runpy

    for name in ("mlops.yaml", "train.py"):
        shutil.copyfile(QUICKSTART / name, tmp_path / name)
    monkeypatch.chdir(tmp_path)
    runpy.run_path(str(tmp_path / "train.py"), run_name="__main__")
    return tmp_path


@pytest.fixture
def converted(quickstart: Path) -> Path:
    """The quickstart with iris@1 registered and converted to ONNX."""
    from click.testing import CliRunner

    from mlops_iac.cli import main

    runner = CliRunner()
    assert runner.invoke(main, ["register", "iris", "--file", "model.joblib"]).exit_code == 0
    assert runner.invoke(main, ["convert", "iris@1", "--no-speed"]).exit_code == 0
    return quickstart


def copy_into(src: Path, folder: Path) -> Path:
    dst = folder / "mlops.yaml"
    shutil.copyfile(src, dst)
    return dst


def installed_env() -> dict[str, str]:
    """The environment of a user whose virtual environment is active (this interpreter's), so
    that `mlops-iac` and `python` are the installed ones."""
    import sys

    return {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"}


def cli(*args: str, cwd: Path, timeout: float = 300) -> subprocess.CompletedProcess[str]:
    """`mlops-iac ARGS...` as a user runs it: the installed command, in a folder of theirs."""
    return subprocess.run(
        ["mlops-iac", *args], cwd=cwd, env=installed_env(), capture_output=True, text=True, timeout=timeout
    )


def require(what: str) -> None:
    """Skip on a developer's machine without `what`; fail in CI, where it must exist."""
    if os.environ.get("MLOPS_IAC_REQUIRE_INTEGRATION"):
        pytest.fail(f"{what} is required in CI (MLOPS_IAC_REQUIRE_INTEGRATION is set)")
    pytest.skip(f"{what} is not available on this machine")


def require_module(name: str) -> Any:
    """An optional dependency the tests need: imported, or `require`d (a failure in CI)."""
    try:
        return importlib.import_module(name)
    except ImportError:
        require(f"{name} (an extra in pyproject.toml: pytorch for torch, dev for jsonschema)")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_http(url: str, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while True:
        try:
            with urllib.request.urlopen(url, timeout=1):
                return
        except OSError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.05)


@dataclass
class OciRegistryServer:
    address: str
    storage: Path

    def blob_path(self, digest: str) -> Path:
        hexdigest = digest.removeprefix("sha256:")
        return self.storage / "docker/registry/v2/blobs/sha256" / hexdigest[:2] / hexdigest / "data"


@pytest.fixture(scope="session")
def oci_registry(tmp_path_factory: pytest.TempPathFactory) -> Iterator[OciRegistryServer]:
    """A real OCI distribution registry (Debian's docker-registry) on 127.0.0.1."""
    binary = shutil.which("docker-registry")
    if binary is None:
        require("docker-registry (apt-get install docker-registry)")
    folder = tmp_path_factory.mktemp("oci-registry")
    port = free_port()
    (folder / "config.yml").write_text(
        "version: 0.1\nlog: {level: error}\n"
        f"storage: {{filesystem: {{rootdirectory: {folder / 'data'}}}, delete: {{enabled: true}}}}\n"
        f"http: {{addr: '127.0.0.1:{port}'}}\n"
    )
    with open(folder / "log", "wb") as log:
        proc = subprocess.Popen(
            [str(binary), "serve", str(folder / "config.yml")], stdout=subprocess.DEVNULL, stderr=log
        )
        try:
            wait_http(f"http://127.0.0.1:{port}/v2/")
            yield OciRegistryServer(f"127.0.0.1:{port}", folder / "data")
        finally:
            proc.terminate()
            proc.wait(10)
