"""The Azure targets: Container Apps (a revision per version, weights on the ingress) and
Container Instances (a container group per version, a DNS front) under Pulumi's mocks with
pulumi-azure-native, their properties checked against the provider's own input types, the
targets' limits and the weights they cannot honour, and examples/azure's golden stacks."""

from __future__ import annotations

import inspect
import json
import os
import re
import shutil
from pathlib import Path
from typing import Any

import pulumi
import pulumi_azure_native.app as app
import pulumi_azure_native.containerinstance as aci
import pulumi_azure_native.dns as dns
import pytest
from click.testing import CliRunner

from mlops_iac.azure.apps import container_app
from mlops_iac.azure.instances import container_group
from mlops_iac.cli import main
from mlops_iac.components.azure import UnknownProperty, typed
from mlops_iac.errors import ConfigError, PlanError
from mlops_iac.plan import StackPlan
from mlops_iac.plan import plan as make_plan
from mlops_iac.resolve import load

from .conftest import ROOT
from .test_stack_program import check_program, deployed_plans, run_generated
from .test_stacks import Mocks

AZURE = ROOT / "examples" / "azure"
GOLDEN = AZURE / "stacks"


def stack_plan(target: str, folder: Path = AZURE) -> StackPlan:
    (stack,) = make_plan(load(folder / "mlops.yaml").resolved, (target,)).stacks
    return stack


def run_program(
    stack: StackPlan, registry: tuple[str, str] | None = None, exported: dict[str, Any] | None = None
) -> Mocks:
    """The components of a plan under Pulumi's mocks; `exported` gets the stack's exports, resolved."""
    from mlops_iac.components import deploy

    mocks = Mocks()
    pulumi.runtime.set_mocks(mocks, project=stack.project, stack=stack.target.name, preview=False)

    @pulumi.runtime.test
    def program() -> pulumi.Output[Any]:
        outputs = deploy(stack, api_key="s3cret", registry=registry)
        return pulumi.Output.all(**outputs).apply(
            lambda values: (exported if exported is not None else {}).update(values)
        )

    program()
    return mocks


def unwrap(value: Any) -> Any:
    """An input as Pulumi's mocks record it, without the secret envelope."""
    if isinstance(value, dict) and "4dabf18193072939515e22adb298388d" in value:
        return value["value"]
    return value


# --- the provider's own input types ---------------------------------------------------------------


def input_names(kind: type) -> dict[str, type | None]:
    """The wire names of an input type's properties, each with its nested input type, read
    from the provider's classes themselves (`@pulumi.getter(name=...)` and the annotations)."""
    module = inspect.getmodule(kind)
    out = {}
    for param in list(inspect.signature(kind.__init__).parameters.values())[1:]:
        getter = getattr(kind, param.name).fget
        found = re.search(r"ForwardRef\('(\w+Args)'\)", repr(param.annotation))
        out[getter._pulumi_name] = getattr(module, found.group(1)) if found else None
    return out


def unknown_names(kind: type, data: dict[str, Any], where: str) -> list[str]:
    names = input_names(kind)
    problems = [f"{where}.{k}" for k in data if k not in names]
    for key, value in data.items():
        nested = names.get(key)
        if nested is None:
            continue
        for i, item in enumerate(value if isinstance(value, list) else [value]):
            if isinstance(item, dict):
                problems += unknown_names(nested, item, f"{where}.{key}[{i}]")
    return problems


def test_every_property_is_an_input_of_the_provider() -> None:
    apps, instances = stack_plan("apps"), stack_plan("instances")
    login = ("acme", "pw")
    for dep in apps.deployments:
        data = container_app("p", apps.target.spec, dep, api_key="k", registry=login)  # type: ignore[arg-type]
        assert unknown_names(app.ContainerAppArgs, data, "ContainerApp") == []
        assert data["configuration"]["registries"][0]["passwordSecretRef"] == "registry-password"
    for dep in instances.deployments:
        for v in dep.versions:
            data = container_group("p", instances.target.spec, dep, v, api_key="k", registry=login)  # type: ignore[arg-type]
            assert unknown_names(aci.ContainerGroupArgs, data, "ContainerGroup") == []
            assert data["imageRegistryCredentials"][0]["server"] == "ghcr.io"
    assert "cnameRecord" in input_names(dns.RecordSetArgs) and "ttl" in input_names(dns.RecordSetArgs)


def test_a_misspelt_property_fails_before_azure_sees_it() -> None:
    stack = stack_plan("apps")
    data = container_app("p", stack.target.spec, stack.deployments[0], api_key="k")  # type: ignore[arg-type]
    data["template"]["scale"]["maxReplica"] = 3
    with pytest.raises(UnknownProperty, match=r"template\.scale: ScaleArgs has no property 'maxReplica'"):
        typed(app.ContainerAppArgs, data)
    assert unknown_names(app.ContainerAppArgs, data, "ContainerApp") == ["ContainerApp.template[0].scale[0].maxReplica"]
    del data["template"]["scale"]["maxReplica"]
    data["configuration"]["activeRevisionsMode"] = "multiple"  # the API's values are case-sensitive here
    with pytest.raises(
        UnknownProperty,
        match=r"activeRevisionsMode: 'multiple' is not one of the provider's values "
        r"\(Labels, Multiple, Single\)",
    ):
        typed(app.ContainerAppArgs, data)
    assert "Multiple" in {m.value for m in app.ActiveRevisionsMode}


# --- Container Apps ----------------------------------------------------------------------------


def test_container_app_has_a_revision_per_version_and_the_weights() -> None:
    exported: dict[str, Any] = {}
    mocks = run_program(stack_plan("apps"), registry=("acme", "registry-pw"), exported=exported)
    assert exported == {"iris-apps": "iris-apps.example.azurecontainerapps.io"}  # the app's name, split by weight
    (component,) = mocks.of("mlops:azure:ContainerApp")
    (resource,) = mocks.of("azure-native:app:ContainerApp")
    inputs = resource.inputs
    config = unwrap(inputs["configuration"])  # secret: it holds the API key and the registry password
    assert config["activeRevisionsMode"] == "Multiple"
    traffic = {t["revisionName"]: t["weight"] for t in config["ingress"]["traffic"]}
    assert traffic == {"iris-apps--v1-8f03a2cb": 90, "iris-apps--v2-8e247c07": 10}
    assert config["ingress"]["targetPort"] == 8080 and config["ingress"]["allowInsecure"] is False
    assert config["ingress"]["additionalPortMappings"] == [{"external": False, "targetPort": 8082}]
    secrets = {s["name"]: s["value"] for s in config["secrets"]}
    assert secrets == {"api-key": "s3cret", "registry-password": "registry-pw"}
    assert config["registries"] == [{"server": "ghcr.io", "username": "acme", "passwordSecretRef": "registry-password"}]
    template = inputs["template"]
    assert template["revisionSuffix"] == "v2-8e247c07"  # the newest version (the canary) is the template
    (container,) = template["containers"]
    assert container["image"].startswith("ghcr.io/acme/models/iris@sha256:4bdad59a")  # v2, by digest
    assert {p["type"]: p["httpGet"]["path"] for p in container["probes"]} == {
        "Startup": "/v2/health/ready",
        "Readiness": "/v2/health/ready",
        "Liveness": "/v2/health/live",
    }
    assert all(p["failureThreshold"] <= 10 and p["periodSeconds"] <= 240 for p in container["probes"])
    env = {e["name"]: e for e in container["env"]}
    assert env["MLOPS_IAC_API_KEY"] == {"name": "MLOPS_IAC_API_KEY", "secretRef": "api-key"}
    assert json.loads(env["MLOPS_IAC_SERVER_SETTINGS"]["value"])["models"][0]["version"] == 2
    # 1 core limit (profile) -> 1 core and 2Gi, a pair Container Apps allow
    assert container["resources"] == {"cpu": 1.0, "memory": "2Gi"}
    scale = template["scale"]
    assert scale["minReplicas"] == 1 and scale["rules"] == [
        {"name": "http-concurrency", "http": {"metadata": {"concurrentRequests": "100"}}}
    ]
    assert inputs["managedEnvironmentId"].endswith("/managedEnvironments/ml-prod")
    assert component.name == "iris-apps"


def test_a_rollout_drives_the_revision_weights(tmp_path: Path) -> None:
    """The rollout's current step (a fact in mlops.lock) sets the weights, as on Kubernetes."""
    from mlops_iac.lock import RolloutFacts, read_lock, write_lock

    folder = tmp_path / "azure"
    shutil.copytree(AZURE, folder, ignore=shutil.ignore_patterns("stacks"))
    spec = folder / "mlops.yaml"
    spec.write_text(
        spec.read_text().replace(
            "    traffic: {1: 90, 2: 10}     # canary: 10% to version 2's revision\n",
            "    rollout: {steps: [10, 50, 100]}\n",
        )
    )
    lock = read_lock(folder / "mlops.lock")
    write_lock(
        folder / "mlops.lock",
        lock.with_rollout("iris-apps", RolloutFacts(stable=1, canary=2, step=1, weight=50, started=0)),
    )
    stack = stack_plan("apps", folder)
    config = unwrap(run_program(stack).of("azure-native:app:ContainerApp")[0].inputs["configuration"])
    assert {t["revisionName"]: t["weight"] for t in config["ingress"]["traffic"]} == {
        "iris-apps--v1-8f03a2cb": 50,
        "iris-apps--v2-8e247c07": 50,
    }
    # The evidence comes from Prometheus (the metrics port is open only inside the environment).
    result = CliRunner().invoke(
        main, ["rollout", "status", "iris-apps", "-f", str(spec)], env={"MLOPS_IAC_PROMETHEUS_URL": ""}
    )
    assert result.exit_code == 1 and "runs on a target of kind azure-container-apps: pass --prometheus" in result.output


def test_container_apps_limits(tmp_path: Path) -> None:
    folder = tmp_path / "azure"
    shutil.copytree(AZURE, folder, ignore=shutil.ignore_patterns("stacks"))
    spec = folder / "mlops.yaml"
    text = spec.read_text()
    spec.write_text(text.replace("      replicas: {min: 1, max: auto}\n", "      cpu: 3\n      memory: 12Gi\n", 1))
    stack = stack_plan("apps", folder)
    with pytest.raises(PlanError, match=r"need 6 cores on Container Apps, above its 4 cores"):
        container_app("p", stack.target.spec, stack.deployments[0])  # type: ignore[arg-type]
    spec.write_text(text.replace("      replicas: {min: 1, max: auto}\n", "      gpu: 1\n", 1))
    with pytest.raises(ConfigError) as caught:
        load(spec)
    assert [p.allowed for p in caught.value.problems if p.severity == "error"] == [
        "set gpu: true on targets.apps or use gpu: 0"
    ]
    spec.write_text(spec.read_text().replace("    concurrency: 100", "    gpu: true\n    concurrency: 100"))
    with pytest.raises(ConfigError) as caught:
        load(spec)
    (problem,) = [p for p in caught.value.problems if p.severity == "error"]
    assert problem.path == "deployments[0].hardware.gpu" and "workloadProfile" in problem.allowed
    spec.write_text(spec.read_text().replace("    gpu: true\n", "    gpu: true\n    workloadProfile: gpu-t4\n"))
    data = container_app("p", stack_plan("apps", folder).target.spec, stack_plan("apps", folder).deployments[0])  # type: ignore[arg-type]
    assert data["workloadProfileName"] == "gpu-t4"


# --- Container Instances ---------------------------------------------------------------------------


def test_container_groups_per_version_and_the_front() -> None:
    exported: dict[str, Any] = {}
    mocks = run_program(stack_plan("instances"), registry=("acme", "registry-pw"), exported=exported)
    assert exported == {
        f"iris-v{n}-{d}": f"iris-v{n}-{d}.abc123.westeurope.azurecontainer.io"
        for n, d in ((1, "8f03a2cb"), (2, "8e247c07"))
    }
    groups = {g.name: g.inputs for g in mocks.of("azure-native:containerinstance:ContainerGroup")}
    assert sorted(groups) == ["iris-v1-8f03a2cb-group", "iris-v2-8e247c07-group"]
    v1 = groups["iris-v1-8f03a2cb-group"]
    (container,) = unwrap(v1["containers"])  # secret: the API key is a secure value
    assert container["image"].startswith("ghcr.io/acme/models/iris@sha256:4e00161a")
    assert {e["name"]: e.get("secureValue", "-") for e in container["environmentVariables"]} == {
        "MLOPS_IAC_SERVER_SETTINGS": "-",
        "MLOPS_IAC_API_KEY": "s3cret",
    }
    assert container["readinessProbe"]["httpGet"]["path"] == "/v2/health/ready"
    assert container["livenessProbe"]["httpGet"]["path"] == "/v2/health/live"
    assert container["resources"]["requests"] == {"cpu": 1.0, "memoryInGB": 0.2}  # 1 core limit, 128Mi -> 0.2 GB
    assert v1["ipAddress"]["dnsNameLabel"] == "iris-v1-8f03a2cb" and v1["osType"] == "Linux"
    assert unwrap(v1["imageRegistryCredentials"]) == [
        {"server": "ghcr.io", "username": "acme", "password": "registry-pw"}
    ]
    (record,) = mocks.of("azure-native:dns:RecordSet")
    assert record.inputs["recordType"] == "CNAME" and record.inputs["relativeRecordSetName"] == "iris"
    # the front points at the version with all the traffic: v1 (traffic {1: 100, 2: 0})
    assert record.inputs["cnameRecord"] == {"cname": "iris-v1-8f03a2cb.abc123.westeurope.azurecontainer.io"}


def test_weights_aci_cannot_honour_are_located_errors(tmp_path: Path) -> None:
    folder = tmp_path / "azure"
    shutil.copytree(AZURE, folder, ignore=shutil.ignore_patterns("stacks"))
    spec = folder / "mlops.yaml"
    text = spec.read_text()
    spec.write_text(text.replace("    traffic: {1: 100, 2: 0}", "    traffic: {1: 90, 2: 10}"))
    with pytest.raises(ConfigError) as caught:
        load(spec)
    found = {p.path: p for p in caught.value.problems if p.severity == "error"}
    assert set(found) == {"deployments[1].traffic[1]", "deployments[1].traffic[2]"}
    problem = found["deployments[1].traffic[2]"]
    # the second deployment's traffic line (the first is the Container App's canary)
    line = [i for i, x in enumerate(spec.read_text().splitlines(), 1) if "traffic: {1: 90, 2: 10}" in x][1]
    assert problem.line == line and "no load balancer" in problem.message and "expected 100" in problem.allowed
    spec.write_text(text.replace("    traffic: {1: 100, 2: 0}", "    rollout: {steps: [10, 100]}"))
    with pytest.raises(ConfigError) as caught:
        load(spec)
    assert [p.path for p in caught.value.problems if p.severity == "error"] == ["deployments[1].rollout"]
    result = CliRunner().invoke(main, ["validate", "-f", str(spec)])
    assert result.exit_code == 1 and "deployments[1].rollout" in result.output and "Traceback" not in result.output


def test_container_instances_limits(tmp_path: Path) -> None:
    folder = tmp_path / "azure"
    shutil.copytree(AZURE, folder, ignore=shutil.ignore_patterns("stacks"))
    spec = folder / "mlops.yaml"
    spec.write_text(
        spec.read_text().replace(
            "    target: instances\n", "    target: instances\n    hardware:\n      cpu: 2\n      memory: 20Gi\n"
        )
    )
    stack = stack_plan("instances", folder)
    with pytest.raises(PlanError, match=r"exceed a Container Instances group \(4 cores, 16 GB\)"):
        container_group("p", stack.target.spec, stack.deployments[0], stack.deployments[0].versions[0])  # type: ignore[arg-type]


# --- the generated program and the golden stacks ---------------------------------------------------


def test_golden_azure_stacks_are_fresh(tmp_path: Path) -> None:
    """examples/azure/stacks is what `mlops-iac synth` makes of examples/azure (its default
    output folder); update with MLOPS_IAC_UPDATE_GOLDEN=1."""
    out = GOLDEN if os.environ.get("MLOPS_IAC_UPDATE_GOLDEN") else tmp_path / "stacks"
    result = CliRunner().invoke(main, ["synth", "-f", str(AZURE / "mlops.yaml"), "--out", str(out), "--no-contexts"])
    assert result.exit_code == 0, result.output
    fresh = {p.relative_to(out).as_posix(): p.read_bytes() for p in out.rglob("*") if p.is_file()}
    golden = {p.relative_to(GOLDEN).as_posix(): p.read_bytes() for p in GOLDEN.rglob("*") if p.is_file()}
    assert fresh == golden, "examples/azure/stacks is stale: run MLOPS_IAC_UPDATE_GOLDEN=1 pytest tests/test_azure.py"
    assert "Pulumi.plants.yaml" not in golden and "plants/plant-1.deployment.json" in golden
    assert b"pulumi-azure-native" in golden["requirements.txt"] and b"s3cret" not in b"".join(golden.values())


def test_the_golden_azure_program_runs_as_pulumi_starts_it() -> None:
    plans = deployed_plans(AZURE)
    assert sorted(plans) == ["apps", "instances"]
    check_program(GOLDEN, plans)
    mocks, _ = run_generated(GOLDEN, "shop-azure", "instances", preview=True)  # unknown outputs: the FQDNs
    assert len(mocks.of("azure-native:containerinstance:ContainerGroup")) == 2


def test_iot_edge_has_no_pulumi_stack() -> None:
    from mlops_iac.components import deploy

    with pytest.raises(ValueError, match="az iot edge deployment create"):
        deploy(stack_plan("plants"))


def test_render_prints_what_the_components_create(tmp_path: Path) -> None:
    """`mlops-iac render` for an Azure target: the properties the components build (secrets shown
    as the config that sets them)."""
    out = tmp_path / "apps.json"
    result = CliRunner().invoke(
        main, ["render", "-f", str(AZURE / "mlops.yaml"), "--target", "apps", "--format", "json", "--out", str(out)]
    )
    assert result.exit_code == 0, result.output
    (rendered,) = json.loads(out.read_text())["resources"]
    (created,) = run_program(stack_plan("apps")).of("azure-native:app:ContainerApp")
    assert rendered["type"] == "azure-native:app:ContainerApp" and rendered["name"] == "iris-apps"
    assert rendered["properties"]["template"] == created.inputs["template"]
    secrets = {s["name"]: s["value"] for s in rendered["properties"]["configuration"]["secrets"]}
    assert secrets["api-key"] == "(secret: pulumi config mlops:apiKey)"
    result = CliRunner().invoke(main, ["render", "-f", str(AZURE / "mlops.yaml"), "--target", "plants"])
    assert result.exit_code == 0 and result.output.count("type: iothub:edge-deployment") == 2


def test_a_deployment_name_that_cannot_name_a_container_app(tmp_path: Path) -> None:
    folder = tmp_path / "azure"
    shutil.copytree(AZURE, folder, ignore=shutil.ignore_patterns("stacks"))
    spec = folder / "mlops.yaml"
    long_name = "iris--apps-of-the-shop-in-westeurope"
    spec.write_text(spec.read_text().replace("  - name: iris-apps\n", f"  - name: {long_name}\n"))
    with pytest.raises(ConfigError) as caught:
        load(spec)
    (problem,) = [p for p in caught.value.problems if p.severity == "error"]
    assert problem.path == "deployments[0].name" and "at most 32" in problem.allowed and problem.line > 1
