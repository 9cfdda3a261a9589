"""The generated Pulumi program, run the way `pulumi up -s STACK` starts it: Pulumi's mocks
with the project and stack names, the stack's config (the API key as a secret), and the
generated `__main__.py` itself executed from its own folder. For every stack of the committed
stacks/ and of a fresh `synth` of every example; the resources it registers are asserted."""

from __future__ import annotations

import json
import os
import runpy
import subprocess
from pathlib import Path
from typing import Any

import pulumi
import pytest
from click.testing import CliRunner
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from mlops_iac.cli import main
from mlops_iac.plan import StackPlan
from mlops_iac.plan import plan as make_plan
from mlops_iac.resolve import load

from .conftest import ROOT
from .test_stacks import Mocks  # Pulumi's own unit-test engine in place of the CLI's

# Examples whose lock is committed: a quickstart run leaves an ignored lock of its own,
# made fresh by every run, for a local target that has no Pulumi stack.
EXAMPLES = sorted(
    p.parent
    for p in (ROOT / "examples").glob("*/mlops.lock")
    if subprocess.run(["git", "check-ignore", "-q", str(p)], cwd=ROOT).returncode != 0
)


WORKLOADS = (
    "kubernetes:apps/v1:Deployment",
    "docker:index/container:Container",
    "azure-native:app:ContainerApp",
    "azure-native:containerinstance:ContainerGroup",
)


def run_generated(folder: Path, project: str, stack: str, preview: bool = False) -> tuple[Mocks, dict[str, Any]]:
    """Execute folder/__main__.py as the Pulumi CLI's Python language host would."""
    mocks = Mocks()
    pulumi.runtime.set_mocks(mocks, project=project, stack=stack, preview=preview)
    pulumi.runtime.set_all_config({"mlops:apiKey": "s3cret"}, secret_keys=["mlops:apiKey"])
    exported: dict[str, Any] = {}
    cwd = Path.cwd()

    @pulumi.runtime.test
    def program() -> None:
        os.chdir(folder)  # the CLI runs the program from the project's folder
        try:
            runpy.run_path(str(folder / "__main__.py"), run_name="__main__")
        finally:
            os.chdir(cwd)

    try:
        program()
    finally:
        pulumi.runtime.set_all_config({})
    exported.update({r.name: r for r in mocks.resources})
    return mocks, exported


def in_memory(stack: StackPlan) -> list[tuple[str, str, str]]:
    """What the components register for a plan that never left memory."""
    from mlops_iac.components import deploy

    mocks = Mocks()
    pulumi.runtime.set_mocks(mocks, project=stack.project, stack=stack.target.name, preview=False)

    @pulumi.runtime.test
    def program() -> None:
        deploy(stack, api_key=pulumi.Output.secret("s3cret"))

    program()
    return registered(mocks)


def registered(mocks: Mocks) -> list[tuple[str, str, str]]:
    return sorted((r.typ, r.name, json.dumps(r.inputs, sort_keys=True, default=str)) for r in mocks.resources)


def check_program(folder: Path, plans: dict[str, StackPlan]) -> None:
    """Run every stack of a generated project; each registers what its plan in memory does."""
    project = next(
        line.split(":", 1)[1].strip()
        for line in (folder / "Pulumi.yaml").read_text().splitlines()
        if line.startswith("name:")
    )
    stacks = sorted(p.name.removeprefix("Pulumi.").removesuffix(".yaml") for p in folder.glob("Pulumi.*.yaml"))
    assert stacks == sorted(plans), f"stack files in {folder}: {stacks}"
    for name in stacks:
        mocks, _ = run_generated(folder, project, name)
        kinds = {r.typ for r in mocks.resources}
        workloads = [r for r in mocks.resources if r.typ in WORKLOADS]
        # a Container App is one resource for all of its versions (a revision each)
        assert (
            len(workloads)
            == sum(
                1 if plans[name].target.spec.kind == "azure-container-apps" else len(d.versions)
                for d in plans[name].deployments
            )
            > 0
        )
        assert {
            "mlops:k8s:ModelServer",
            "mlops:docker:ModelServer",
            "mlops:azure:ContainerApp",
            "mlops:azure:ContainerGroups",
        } & kinds
        assert registered(mocks) == in_memory(plans[name]), f"{folder.name}/{name} differs from its plan"


def deployed_plans(example: Path) -> dict[str, StackPlan]:
    stacks = make_plan(load(example / "mlops.yaml").resolved).stacks
    # local targets run with `serve`, IoT Edge devices take manifests: neither has a Pulumi stack
    return {s.target.name: s for s in stacks if s.target.spec.kind not in ("local", "azure-iot-edge")}


def test_the_committed_stacks_run_as_pulumi_starts_them() -> None:
    plans = deployed_plans(ROOT / "examples" / "production")
    assert sorted(plans) == ["edge", "prod"]
    check_program(ROOT / "stacks", plans)


@pytest.mark.parametrize("stack", ["prod", "edge"])
def test_the_committed_stacks_preview(stack: str) -> None:
    """`pulumi preview` runs the program with unknown outputs (the Secret's version, image ids)."""
    mocks, _ = run_generated(ROOT / "stacks", "shop", stack, preview=True)
    names = {r.name for r in mocks.resources}
    assert ("iris-v1-8f03a2cb-deployment" if stack == "prod" else "iris-v1-8f03a2cb-container") in names


def test_every_example_with_a_lock_is_checked() -> None:
    assert [p.name for p in EXAMPLES] == ["azure", "production"]


@pytest.mark.parametrize("example", EXAMPLES, ids=[p.name for p in EXAMPLES])
def test_a_fresh_synth_of_every_example_runs(example: Path, tmp_path: Path) -> None:
    out = tmp_path / "stacks"
    result = CliRunner().invoke(main, ["synth", "-f", str(example / "mlops.yaml"), "--out", str(out), "--no-contexts"])
    assert result.exit_code == 0, result.output
    check_program(out, deployed_plans(example))


SINKS = st.one_of(
    st.builds(
        lambda path, size, backups: {"kind": "file", "path": path, "maxBytes": size, "backups": backups},
        st.from_regex(r"[a-z]{1,8}/[a-z]{1,8}\.jsonl", fullmatch=True),
        st.integers(1024, 2**40),
        st.integers(0, 1000),
    ),
    st.just({"kind": "stdout"}),
    st.builds(
        lambda host: {"kind": "http", "url": f"https://{host}/events"},
        st.from_regex(r"[a-z]{1,10}\.example", fullmatch=True),
    ),
)
KUBERNETES = st.fixed_dictionaries(
    {"kind": st.just("kubernetes")},
    optional={
        "context": st.from_regex(r"[a-z][a-z0-9-]{0,10}", fullmatch=True),
        "namespace": st.one_of(
            st.from_regex(r"[a-z][a-z0-9]{0,10}", fullmatch=True),
            st.fixed_dictionaries({"name": st.just("team-a"), "create": st.booleans()}),
        ),
        "imagePullSecrets": st.lists(st.sampled_from(["ghcr", "acr"]), max_size=2, unique=True),
        "monitoring": st.fixed_dictionaries(
            {},
            optional={
                "namespace": st.just("observability"),
                "prometheusOperator": st.fixed_dictionaries(
                    {"enabled": st.booleans()},
                    optional={
                        "labels": st.dictionaries(
                            st.sampled_from(["release", "team"]), st.from_regex(r"[a-z]{1,8}", fullmatch=True)
                        )
                    },
                ),
            },
        ),
        "gateway": st.fixed_dictionaries({"name": st.just("public")}, optional={"namespace": st.just("gw")}),
        "hostname": st.just("models.example.com"),
        "platform": st.sampled_from(["linux/amd64", "linux/arm64"]),
        "gpu": st.booleans(),
    },
)
DOCKER = st.fixed_dictionaries(
    {"kind": st.just("docker")},
    optional={
        "host": st.sampled_from(["ssh://deploy@edge-01", "unix:///var/run/docker.sock", "tcp://10.0.0.2:2376"]),
        "port": st.integers(1, 60000),
        "sshOpts": st.lists(st.sampled_from(["-o", "BatchMode=yes", "-i", "/keys/edge"]), max_size=4),
        "platform": st.sampled_from(["linux/amd64", "linux/arm64"]),
        "gpu": st.booleans(),
    },
)


AZURE = st.one_of(
    st.fixed_dictionaries(
        {
            "kind": st.just("azure-container-apps"),
            "resourceGroup": st.just("ml-prod"),
            "location": st.sampled_from(["westeurope", "eastus2"]),
            "environment": st.just("/subscriptions/s/resourceGroups/r/providers/Microsoft.App/managedEnvironments/e"),
        },
        optional={
            "external": st.booleans(),
            "concurrency": st.integers(1, 10_000),
            "workloadProfile": st.just("gpu-t4"),
            "gpu": st.booleans(),
        },
    ),
    st.fixed_dictionaries(
        {
            "kind": st.just("azure-container-instances"),
            "resourceGroup": st.just("ml-prod"),
            "location": st.just("westeurope"),
        },
        optional={
            "front": st.fixed_dictionaries(
                {"zone": st.just("example.com"), "name": st.just("iris")}, optional={"ttl": st.integers(1, 86_400)}
            ),
            "gpu": st.booleans(),
            "gpuSku": st.sampled_from(["K80", "P100", "V100"]),
        },
    ),
    st.fixed_dictionaries(
        {
            "kind": st.just("azure-iot-edge"),
            "hub": st.just("acme-hub"),
            "deviceGroups": st.dictionaries(st.sampled_from(["plant-1", "lab"]), st.just("tags.site='x'"), min_size=1),
        },
        optional={
            "priority": st.integers(0, 100),
            "port": st.integers(1, 60000),
            "platform": st.sampled_from(["linux/amd64", "linux/arm64"]),
        },
    ),
)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(target=st.one_of(KUBERNETES, DOCKER, AZURE), sink=SINKS, sample_rate=st.floats(0, 1), threads=st.integers(1, 64))
def test_plan_json_round_trips_for_every_field(
    target: dict[str, Any], sink: dict[str, Any], sample_rate: float, threads: int
) -> None:
    """What plan() writes as <target>/plan.json, StackPlan reads back equal, every field."""
    from pydantic import TypeAdapter

    from mlops_iac.plan import stack_json
    from mlops_iac.resolve import ResolvedTarget
    from mlops_iac.spec.monitoring import Sink
    from mlops_iac.spec.targets import Target

    base = PLANS["prod"]
    dep = base.deployments[0]
    monitoring = dep.monitoring.model_copy(
        update={"sink": TypeAdapter(Sink).validate_python(sink), "sample_rate": sample_rate}
    )
    versions = tuple(
        v.model_copy(update={"hardware": v.hardware.model_copy(update={"threads": threads})}) for v in dep.versions
    )
    stack = base.model_copy(
        update={
            "target": ResolvedTarget(name="t", spec=TypeAdapter(Target).validate_python(target)),
            "deployments": (dep.model_copy(update={"monitoring": monitoring, "versions": versions}),),
        }
    )
    assert StackPlan.model_validate_json(stack_json(stack)) == stack


PLANS = deployed_plans(ROOT / "examples" / "production")


def test_requirements_install_offline_in_a_fresh_venv_from_a_wheel_of_this_checkout(tmp_path: Path) -> None:
    """stacks/requirements.txt as `pulumi up` installs it, with no index: mlops-iac from a wheel
    built from this checkout (PIP_FIND_LINKS), Pulumi's SDKs from the tests' own environment."""
    import subprocess
    import sys

    wheels, env_dir = tmp_path / "wheels", tmp_path / "venv"
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            "--no-deps",
            "--no-build-isolation",
            "--no-index",
            "-q",
            "-w",
            str(wheels),
            str(ROOT),
        ],
        check=True,
        timeout=300,
    )
    # A fresh venv that sees the tests' own environment, where Pulumi's SDKs are (the base
    # interpreter of a virtual environment may have none).
    layered = ROOT / "tests/workflows/standins/setup-python/layered_venv.py"
    subprocess.run([sys.executable, str(layered), str(env_dir)], check=True, timeout=300, capture_output=True)
    python = str(env_dir / "bin" / "python")
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    env |= {"PIP_FIND_LINKS": str(wheels), "PIP_NO_INDEX": "1", "PYTHONNOUSERSITE": "1"}
    requirements = ROOT / "stacks" / "requirements.txt"
    pip = [sys.executable, "-m", "pip", "--python", python, "install", "-q", "--disable-pip-version-check"]
    subprocess.run([*pip, "-r", str(requirements)], check=True, env=env, cwd=tmp_path, timeout=300)
    # The interpreter's site may hold a development install of mlops-iac, which satisfies the
    # line above by itself: install that line again, ignoring it, so the wheel must resolve.
    (line,) = [x for x in requirements.read_text().splitlines() if x.startswith("mlops-iac")]
    subprocess.run([*pip, "--ignore-installed", "--no-deps", line], check=True, env=env, cwd=tmp_path, timeout=300)
    # The installed wheel, not this checkout, runs the committed program under Pulumi's mocks.
    found = subprocess.run(
        [python, "-c", "import mlops_iac.components, pulumi_kubernetes; print(mlops_iac.__file__)"],
        check=True,
        env=env,
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert found.stdout.strip().startswith(str(env_dir)), found.stdout


def test_the_requirement_comes_from_mlops_yaml(tmp_path: Path) -> None:
    import shutil

    from mlops_iac.errors import ConfigError

    folder = tmp_path / "p"
    shutil.copytree(ROOT / "examples" / "production", folder)
    spec = folder / "mlops.yaml"
    text = spec.read_text()
    pinned = "mlops-iac @ git+https://github.com/acme/mlops-iac@0123456789abcdef0123456789abcdef01234567"
    spec.write_text(text.replace("  name: shop\n", f"  name: shop\n  mlopsIac: {pinned}\n"))
    (requirements,) = [f for f in make_plan(load(spec).resolved).files if f.path == "requirements.txt"]
    assert pinned in str(requirements.content).splitlines()
    spec.write_text(text.replace("  name: shop\n", "  name: shop\n  mlopsIac: mlops-iac==0.1.0; rm -rf\n"))
    with pytest.raises(ConfigError) as caught:
        load(spec)
    assert caught.value.first.path == "project.mlopsIac" and "expected a requirement for mlops-iac" in str(caught.value)
