"""IoT Edge: the deployment manifests `synth` writes, validated against Microsoft's published
JSON schemas (tests/schemas, see SOURCE.md there), and applied per device group by the deploy
action. Their module runs on the Docker engine as the edge agent creates it in test_pods.py
(beside the other rendered containers, sharing the session's built image)."""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import uuid
from pathlib import Path
from typing import Any

import jsonschema
import pytest
from click.testing import CliRunner

from mlops_iac.azure.common import CREATE_OPTIONS_CHUNK
from mlops_iac.azure.edge import create_options, split_create_options
from mlops_iac.cli import main
from mlops_iac.errors import PlanError
from mlops_iac.plan import plan as make_plan
from mlops_iac.resolve import load

from . import podrun
from .conftest import ROOT, require

KEY = "edge-test-key-" + uuid.uuid4().hex[:8]

AZURE = ROOT / "examples" / "azure"
SCHEMAS = Path(__file__).parent / "schemas"


def schema(name: str) -> jsonschema.protocols.Validator:
    document = json.loads((SCHEMAS / name).read_text())
    validator: jsonschema.protocols.Validator = jsonschema.validators.validator_for(document)(document)
    return validator


def violations(manifest: dict[str, Any]) -> list[str]:
    """Every way the manifest breaks the deployment schema, or the edgeAgent's or edgeHub's."""
    content = manifest.get("modulesContent", {})
    found = [e.message for e in schema("azure-iot-edge-deployment-2.0.json").iter_errors(manifest)]
    found += [
        e.message
        for e in schema("azure-iot-edgeagent-deployment-1.1.json").iter_errors(
            {"$edgeAgent": content.get("$edgeAgent")}
        )
    ]
    found += [
        e.message
        for e in schema("azure-iot-edgehub-deployment-1.2.json").iter_errors({"$edgeHub": content.get("$edgeHub")})
    ]
    return found


def synth(folder: Path, out: Path) -> dict[str, Path]:
    result = CliRunner().invoke(main, ["synth", "-f", str(folder / "mlops.yaml"), "--out", str(out), "--no-contexts"])
    assert result.exit_code == 0, result.output
    return {p.name: p for p in (out / "plants").iterdir()}


def test_the_schemas_are_the_published_ones() -> None:
    source = (SCHEMAS / "SOURCE.md").read_text()
    for path in sorted(SCHEMAS.glob("*.json")):
        assert hashlib.sha256(path.read_bytes()).hexdigest() in source, path.name


def test_every_manifest_is_valid_and_carries_the_module(tmp_path: Path) -> None:
    files = synth(AZURE, tmp_path / "stacks")
    assert sorted(files) == [
        "plan.json",
        "plant-1.condition",
        "plant-1.deployment.json",
        "plant-2.condition",
        "plant-2.deployment.json",
    ]
    assert files["plant-2.condition"].read_text() == "tags.site='plant-2' AND tags.line='packaging'\n"
    manifest = json.loads(files["plant-1.deployment.json"].read_text())
    assert violations(manifest) == []
    agent = manifest["modulesContent"]["$edgeAgent"]["properties.desired"]
    (name,) = agent["modules"]
    module = agent["modules"][name]
    assert name == "iris-v1-8f03a2cb" and module["settings"]["image"].startswith("ghcr.io/acme/models/iris@sha256:")
    assert all(len(v) <= CREATE_OPTIONS_CHUNK for k, v in module["settings"].items() if k.startswith("createOptions"))
    options = podrun.edge_create_options(module["settings"])
    host = options["HostConfig"]
    assert options["User"] == "10001:10001" and host["ReadonlyRootfs"] and host["CapDrop"] == ["ALL"]
    assert host["SecurityOpt"] == ["no-new-privileges:true"] and host["Memory"] == 256 * 2**20
    assert host["NanoCpus"] == 10**9  # the limit: twice the 500m request
    assert options["Healthcheck"]["Test"][-1] == "mlops_iac.serving.health"
    assert module["env"]["MLOPS_IAC_API_KEY"] == {"value": "${MLOPS_IAC_API_KEY}"}  # filled in at apply time
    assert agent["runtime"]["settings"]["registryCredentials"]["registry0"]["address"] == "ghcr.io"
    routes = manifest["modulesContent"]["$edgeHub"]["properties.desired"]["routes"]
    assert routes == {"iris_v1_8f03a2cbToUpstream": "FROM /messages/modules/iris-v1-8f03a2cb/outputs/* INTO $upstream"}
    # what the schema refuses, it refuses in our manifests too
    module["restartPolicy"] = "unless-stopped"
    module["env"]["bad.name"] = {"value": "x"}
    assert len(set(violations(manifest))) == 2  # each caught by the deployment and the edgeAgent schema


def test_long_create_options_are_split_and_joined() -> None:
    (stack,) = make_plan(load(AZURE / "mlops.yaml").resolved, ("plants",)).stacks
    dep, target = stack.deployments[0], stack.target.spec
    options = create_options(dep, dep.versions[0], target)  # type: ignore[arg-type]
    options["Labels"] = {f"label-{i}": "x" * 40 for i in range(30)}  # well over 512 characters
    fields = split_create_options(options)
    text = json.dumps(options, sort_keys=True, separators=(",", ":"))
    count = -(-len(text) // CREATE_OPTIONS_CHUNK)
    assert count > 2 and list(fields) == ["createOptions", *[f"createOptions{i:02d}" for i in range(1, count)]]
    assert podrun.edge_create_options(fields) == options
    options["Labels"] = {f"label-{i}": "x" * 40 for i in range(100)}  # beyond the eight fields the agent reads
    with pytest.raises(PlanError, match="the edge agent takes at most 4096"):
        split_create_options(options)


def test_ports_of_two_versions_on_a_device_do_not_collide(tmp_path: Path) -> None:
    from mlops_iac.azure.edge import edge_files

    folder = tmp_path / "azure"
    shutil.copytree(AZURE, folder, ignore=shutil.ignore_patterns("stacks"))
    spec = folder / "mlops.yaml"
    text = spec.read_text().replace(
        "    version: 1\n    target: plants\n",
        "    versions: [1, 2]\n    traffic: {1: 100, 2: 0}\n    target: plants\n",
    )
    assert "    grpcPort: 8081 " in text
    spec.write_text(text)  # v2's HTTP port would be v1's gRPC port
    with pytest.raises(PlanError, match=r"v2 would listen on host port 8081, which iris-plants v1 \(gRPC\)"):
        edge_files(make_plan(load(spec).resolved))
    text = text.replace("    grpcPort: 8081 ", "    grpcPort: 9080 ")
    spec.write_text(text)
    written = {f.path: f.content for f in edge_files(make_plan(load(spec).resolved))}
    manifest = json.loads(written["plants/plant-1.deployment.json"])
    modules = manifest["modulesContent"]["$edgeAgent"]["properties.desired"]["modules"]
    ports = {n: podrun.edge_create_options(m["settings"])["HostConfig"]["PortBindings"] for n, m in modules.items()}
    assert ports == {
        "iris-v1-8f03a2cb": {"8080/tcp": [{"HostPort": "8080"}], "8081/tcp": [{"HostPort": "9080"}]},
        "iris-v2-8e247c07": {"8080/tcp": [{"HostPort": "8081"}], "8081/tcp": [{"HostPort": "9081"}]},
    }
    spec.write_text(text.replace("    hub: acme-plants\n", "    hub: acme-plants\n    port: 65535\n"))
    with pytest.raises(PlanError, match="would listen on host port 65536"):
        edge_files(make_plan(load(spec).resolved))


def test_the_deploy_action_applies_each_device_group(tmp_path: Path) -> None:
    """actions/deploy on an azure-iot-edge target: no Pulumi, one `az iot edge deployment create`
    per device group with the manifest, its placeholders filled from the environment."""
    from .test_actions import run_action

    if shutil.which("envsubst") is None:
        require("envsubst (apt-get install gettext-base): fills a manifest's placeholders")
    repo = tmp_path / "repo"
    shutil.copytree(AZURE, repo / "deploy", ignore=shutil.ignore_patterns("stacks"))
    # A stand-in for the Azure CLI (IoT Hub cannot be reached from CI): it records each call and
    # the manifest it was given, and knows no deployment yet (`show` fails, as for a new id).
    calls, bin_dir = tmp_path / "az-calls", tmp_path / "bin"
    calls.mkdir()
    bin_dir.mkdir()
    (bin_dir / "az").write_text(
        '#!/usr/bin/env bash\n[ "$1" = extension ] && exit 0\n[ "$4" = show ] && exit 3\n'
        'n=$(ls "$AZ_CALLS" | wc -l)\n'
        'printf "%s\\n" "$@" > "$AZ_CALLS/$n.args"\n'
        "while [ $# -gt 0 ]; do\n"
        '  [ "$1" = --content ] && cp "$2" "$AZ_CALLS/$n.json"; shift\n'
        "done\n"
    )
    (bin_dir / "az").chmod(0o755)
    env = {
        "PATH": f"{bin_dir}:{os.environ['PATH']}",
        "AZ_CALLS": str(calls),
        "MLOPS_IAC_API_KEY": KEY,
        "MLOPS_IAC_REGISTRY_USERNAME": "acme",
        "MLOPS_IAC_REGISTRY_PASSWORD": "registry-pw",
    }
    summary = tmp_path / "summary.md"
    run_action("deploy", {"target": "plants", "working-directory": "deploy"}, repo, summary, env=env)
    applied = sorted(calls.glob("*.args"))
    assert len(applied) == 2 and not (repo / "deploy/stacks/Pulumi.plants.yaml").exists()
    for args_file, group in zip(applied, ("plant-1", "plant-2"), strict=True):
        args = args_file.read_text().splitlines()
        assert args[:4] == ["iot", "edge", "deployment", "create"]
        given = dict(zip(args[4::2], args[5::2], strict=True))
        condition = (repo / f"deploy/stacks/plants/{group}.condition").read_text().strip()
        assert given["--hub-name"] == "acme-plants" and given["--priority"] == "10"
        assert given["--target-condition"] == condition
        assert re.fullmatch(rf"shop-azure-plants-{group}-[0-9a-f]{{8}}", given["--deployment-id"])
        manifest = json.loads(args_file.with_suffix(".json").read_text())
        assert violations(manifest) == []
        (module,) = manifest["modulesContent"]["$edgeAgent"]["properties.desired"]["modules"].values()
        assert module["env"]["MLOPS_IAC_API_KEY"] == {"value": KEY}
        credentials = manifest["modulesContent"]["$edgeAgent"]["properties.desired"]["runtime"]["settings"]
        assert credentials["registryCredentials"]["registry0"]["password"] == "registry-pw"
    assert "created on acme-plants" in summary.read_text()
    del env["MLOPS_IAC_API_KEY"]  # a secret missing: nothing is deployed with an empty key
    with pytest.raises(AssertionError, match="needs MLOPS_IAC_API_KEY"):
        run_action("deploy", {"target": "plants", "working-directory": "deploy"}, repo, summary, env=env)
    assert len(list(calls.glob("*.args"))) == 2


def test_the_readme_deployment_id_is_the_one_render_prints() -> None:
    readme = (ROOT / "README.md").read_text()
    command = re.search(r"az iot edge deployment create --hub-name (\S+) --deployment-id (\S+)", readme)
    assert command is not None, "the README has no `az iot edge deployment create`"
    file = ROOT / "examples/azure/mlops.yaml"
    rendered = CliRunner().invoke(main, ["render", "--target", "plants", "-f", str(file)])
    assert rendered.exit_code == 0, rendered.output
    ids = re.findall(r"^name: (\S+)$", rendered.stdout, re.M)
    assert command.group(2) in ids, (command.group(2), ids)
    assert f"hub: {command.group(1)}" in file.read_text()  # the hub the example's target names
