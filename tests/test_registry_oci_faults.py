"""The OCI backend when the registry fails: bounded, named failures, no stale claims, no moved tags."""

from __future__ import annotations

import os
import secrets
import subprocess
import sys
from pathlib import Path

import pytest

from mlops_iac.errors import RegistryError
from mlops_iac.registry import Registry
from mlops_iac.registry import oci as oci_module
from mlops_iac.registry.oci import CLAIM_TYPE, OciStore, _manifest
from mlops_iac.registry.oci_claim import PID, claim_annotations
from mlops_iac.registry.oci_http import manifest_body

from .conftest import QUICKSTART, OciRegistryServer, cli
from .oci_helpers import DROP, fault_proxy, manifest, tags, version_tags

HANG_GUARD = 60  # seconds; oras' own retries alone slept 131 s per failed call


def _project(folder: Path, repository: str) -> Path:
    spec = (QUICKSTART / "mlops.yaml").read_text()
    oci = f"  backend: oci\n  repository: {repository}\n  insecure: true\n  timeout: 5\n  retries: 1\n"
    (folder / "mlops.yaml").write_text(spec.replace("  backend: local\n  path: .mlops/registry\n", oci))
    (folder / "model.joblib").write_bytes(secrets.token_bytes(64))
    for name in ("sample.npy", "holdout.npz"):
        (folder / name).write_bytes(b"x")
    return folder


def _store(address: str, base: str) -> OciStore:
    return OciStore(f"{address}/{base}", insecure=True, env={}, timeout=5, retries=1)


def test_a_failed_index_write_names_the_step_after_the_configured_attempts(
    oci_registry: OciRegistryServer, tmp_path: Path
) -> None:
    base = f"out{secrets.token_hex(3)}/models"

    def index_write_fails(method: str, path: str) -> int | None:
        return 503 if method == "PUT" and path.endswith("/manifests/index") else None

    with fault_proxy(oci_registry.address, index_write_fails) as proxy:
        project = _project(tmp_path, f"{proxy.address}/{base}")
        result = cli("register", "iris", "--file", "model.joblib", cwd=project, timeout=HANG_GUARD)
    assert result.returncode == 1, result.stdout + result.stderr
    assert "Traceback" not in result.stderr and len(result.stderr.strip().splitlines()) == 1
    assert f"writing the index of iris to {proxy.address}/{base}/iris: HTTP 503" in result.stderr
    assert proxy.count("PUT", "/manifests/index") == 2  # retries: 1 in mlops.yaml
    left = tags(oci_registry.address, f"{base}/iris")
    assert not [t for t in left if t.startswith("lock-")], left  # the claim was released
    assert version_tags(oci_registry.address, f"{base}/iris") == {}  # no tag without an index


def test_a_registry_gone_mid_change_fails_naming_the_step_and_a_retry_takes_over_its_claim(
    oci_registry: OciRegistryServer, tmp_path: Path
) -> None:
    base = f"gone{secrets.token_hex(3)}/models"
    down = [False]

    def gone_after_reading_the_index(method: str, path: str) -> int | None:
        if down[0]:
            return DROP
        down[0] = method == "GET" and path.endswith("/manifests/index")
        return None

    with fault_proxy(oci_registry.address, gone_after_reading_the_index) as proxy:
        project = _project(tmp_path, f"{proxy.address}/{base}")
        failed = cli("register", "iris", "--file", "model.joblib", cwd=project, timeout=HANG_GUARD)
        assert failed.returncode == 1, failed.stdout + failed.stderr
        assert f"writing the index of iris to {proxy.address}/{base}/iris: the registry" in failed.stderr
        assert "did not answer (2 attempts)" in failed.stderr
        assert [t for t in tags(oci_registry.address, f"{base}/iris") if t.startswith("lock-")]  # left behind
        down[0] = False
        proxy.fault = lambda method, path: None
        # The writer that left the claim has exited: its claim is stale at once, not after 120 s.
        again = cli("register", "iris", "--file", "model.joblib", cwd=project, timeout=HANG_GUARD)
    assert again.returncode == 0, again.stdout + again.stderr
    assert again.stdout.startswith("iris@1 ")
    assert not [t for t in tags(oci_registry.address, f"{base}/iris") if t.startswith("lock-")]


def _dead_pid() -> int:
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()
    return child.pid


@pytest.mark.parametrize("holder", ["dead", "alive"])
def test_a_claim_of_a_dead_writer_on_this_machine_is_taken_over_at_once(
    holder: str, oci_registry: OciRegistryServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(oci_module, "WAIT_LIMIT", 0.0)  # one look at the claims, no waiting
    store = _store(oci_registry.address, f"claim{secrets.token_hex(3)}/models")
    repo = store._repo("iris")
    pid = _dead_pid() if holder == "dead" else os.getpid()
    notes = {**claim_annotations("lock-0123456789abcdef"), PID: str(pid)}
    store.http.put_bytes(repo, b"{}")
    store.http.put_manifest(repo, "lock-0123456789abcdef", manifest_body(_manifest(CLAIM_TYPE, [], notes)))
    (tmp_path / "m.bin").write_bytes(b"model")
    registry = Registry(store, env={})
    if holder == "dead":
        assert registry.register("iris", tmp_path / "m.bin", "sklearn")[0].version == 1
        assert not [t for t in tags(oci_registry.address, repo) if t.startswith("lock-")]
    else:
        with pytest.raises(RegistryError, match="gave up waiting for other writers"):
            registry.register("iris", tmp_path / "m.bin", "sklearn")


def test_a_push_interrupted_before_the_index_leaves_no_tag_that_moves(
    oci_registry: OciRegistryServer, tmp_path: Path
) -> None:
    base = f"move{secrets.token_hex(3)}/models"
    failing = [True]

    def index_write_fails_once(method: str, path: str) -> int | None:
        return 400 if failing[0] and method == "PUT" and path.endswith("/manifests/index") else None

    (tmp_path / "a.bin").write_bytes(b"first bytes")
    (tmp_path / "b.bin").write_bytes(b"other bytes")
    with fault_proxy(oci_registry.address, index_write_fails_once) as proxy:
        registry = Registry(_store(proxy.address, base), env={})
        with pytest.raises(RegistryError, match="writing the index of iris"):
            registry.register("iris", tmp_path / "a.bin", "sklearn")
        before = version_tags(oci_registry.address, f"{base}/iris")
        failing[0] = False
        version, _ = registry.register("iris", tmp_path / "b.bin", "sklearn")
    after = version_tags(oci_registry.address, f"{base}/iris")
    assert all(after[tag] == digest for tag, digest in before.items()), (before, after)
    assert manifest(oci_registry.address, f"{base}/iris", f"v{version.version}")[1]["layers"][0]["digest"] == (
        version.digest
    )


def test_a_left_over_version_tag_keeps_its_number(oci_registry: OciRegistryServer, tmp_path: Path) -> None:
    """A `v1` that an older mlops-iac pushed before dying (no index lists it) is never re-pointed."""
    store = _store(oci_registry.address, f"orphan{secrets.token_hex(3)}/models")
    repo = store._repo("iris")
    (tmp_path / "old.bin").write_bytes(b"bytes nobody registered")
    digest, size = store.put_blob("iris", tmp_path / "old.bin")
    layer = {"mediaType": "application/octet-stream", "digest": digest, "size": size}
    store.http.put_bytes(repo, b"{}")
    store.http.put_manifest(repo, "v1", manifest_body(_manifest(oci_module.MODEL_TYPE, [layer], {})))
    orphan = manifest(oci_registry.address, repo, "v1")[0]
    (tmp_path / "new.bin").write_bytes(b"a real registration")
    assert Registry(store, env={}).register("iris", tmp_path / "new.bin", "sklearn")[0].version == 2
    assert version_tags(oci_registry.address, repo)["v1"] == orphan


def test_a_retry_of_an_interrupted_registration_pushes_the_missing_tag(
    oci_registry: OciRegistryServer, tmp_path: Path
) -> None:
    base = f"retry{secrets.token_hex(3)}/models"
    failing = [True]

    def tag_push_fails(method: str, path: str) -> int | None:
        return 400 if failing[0] and method == "PUT" and path.endswith("/manifests/v1") else None

    (tmp_path / "a.bin").write_bytes(b"the bytes")
    with fault_proxy(oci_registry.address, tag_push_fails) as proxy:
        registry = Registry(_store(proxy.address, base), env={})
        with pytest.raises(RegistryError, match=r"tagging .*:v1"):
            registry.register("iris", tmp_path / "a.bin", "sklearn")
        failing[0] = False
        version, new = registry.register("iris", tmp_path / "a.bin", "sklearn")
    assert (version.version, new) == (1, False)  # the index had it: the retry reuses it
    assert manifest(oci_registry.address, f"{base}/iris", "v1")[1]["layers"][0]["digest"] == version.digest
