"""The image's contract (mlops_iac/contract.py) is the one home of its ports, user and environment
names. The spec is a leaf like the contract and leaves import no leaf, so its defaults are written
out there: these tests hold them, and the constants still kept elsewhere, to the contract."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from pydantic import ValidationError

from mlops_iac import contract, manifests
from mlops_iac.images import ContextInputs, context_files
from mlops_iac.spec.azure import IotEdgeTarget
from mlops_iac.spec.registry import OciRegistry
from mlops_iac.spec.targets import DockerTarget, LocalTarget
from mlops_iac.workspace.contexts import server_sources


def test_the_spec_defaults_to_the_contracts_port() -> None:
    for target in (LocalTarget, DockerTarget, IotEdgeTarget):
        assert target.model_fields["port"].default == contract.PORT, target.__name__


def test_the_spec_names_the_contracts_registry_variables() -> None:
    with pytest.raises(ValidationError) as raised:
        OciRegistry.model_validate({"backend": "oci", "repository": "registry.example/models", "password": "x"})
    assert f"set {contract.REGISTRY_USERNAME_ENV} and {contract.REGISTRY_PASSWORD_ENV} in the environment" in str(
        raised.value
    )


def test_the_kubernetes_objects_use_the_contracts_numbers() -> None:
    numbers = (manifests.PORT, manifests.GRPC_PORT, manifests.METRICS_PORT, manifests.UID)
    assert numbers == (contract.PORT, contract.GRPC_PORT, contract.METRICS_PORT, contract.UID)


def test_the_image_carries_the_contract_and_its_dockerfile_keeps_it(tmp_path: Path) -> None:
    """The server imports the contract: its file goes into every image with the server's own code,
    which imports with nothing else on the path (as in the image)."""
    sources = server_sources(batch=True)
    for path, data in sources.items():
        (tmp_path / path).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / path).write_bytes(data)
    env = {**os.environ, "PYTHONPATH": str(tmp_path)}
    modules = "mlops_iac.serving.__main__, mlops_iac.serving.health, mlops_iac.scoring.__main__"
    code = f"import mlops_iac, {modules}; print(mlops_iac.__file__)"
    done = subprocess.run([sys.executable, "-c", code], env=env, cwd=tmp_path, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == str(tmp_path / "mlops_iac" / "__init__.py")
    inputs = ContextInputs(
        model="m",
        version=1,
        model_digest="sha256:" + "0" * 64,
        onnx=b"",
        onnx_digest="sha256:" + "1" * 64,
        created="2026-01-01T00:00:00Z",
        platform="linux/amd64",
        sources=sources,
    )
    dockerfile = next(str(f.content) for f in context_files(inputs) if f.path == "Dockerfile").splitlines()
    uid, port = contract.UID, contract.PORT
    assert [line for line in dockerfile if line.startswith(("USER", "EXPOSE", "CMD", "    MLOPS_IAC_PORT"))] == [
        f"    {contract.PORT_ENV}={port}",
        f"USER {uid}:{uid}",
        f"EXPOSE {port}",
        f'CMD ["--port", "{port}"]',
    ]


def test_a_versions_host_ports_have_one_formula() -> None:
    """Version N's REST and gRPC host ports (`port + N - 1`) come from `version_host_port` alone:
    the Docker containers, the edge modules' createOptions and the plan's collision check agree."""
    import re

    from mlops_iac.azure.edge import edge_grpc_port, edge_port
    from mlops_iac.components.docker import grpc_host_port, host_port
    from mlops_iac.pinned import PinnedVersion

    package = Path(contract.__file__).parent
    formula = re.compile(r"\+\s*\w+\.number\s*-\s*1")
    elsewhere = [str(f.relative_to(package)) for f in sorted(package.rglob("*.py")) if formula.search(f.read_text())]
    assert elsewhere == [], elsewhere
    docker = DockerTarget.model_validate({"kind": "docker", "port": 9000, "grpcPort": 9500})
    edge = IotEdgeTarget.model_validate(
        {
            "kind": "azure-iot-edge",
            "hub": "acme-plants",
            "deviceGroups": {"p": "tags.x='p'"},
            "port": 7000,
            "grpcPort": 7500,
        }
    )
    for n in (1, 2, 7):
        v = PinnedVersion.model_construct(number=n)  # the ports depend on the number alone
        assert (host_port(docker, v), grpc_host_port(docker, v)) == (9000 + n - 1, 9500 + n - 1)
        assert (edge_port(edge, v), edge_grpc_port(edge, v)) == (7000 + n - 1, 7500 + n - 1)
        assert contract.version_host_port(9500, n) == 9500 + n - 1
