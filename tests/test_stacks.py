"""Pulumi stacks: components under Pulumi's own mocks, the golden stacks/, valid manifests,
and a version change that adds, keeps and removes exactly what it should."""

from __future__ import annotations

import copy
import json
import os
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pulumi
import pytest
import yaml
from click.testing import CliRunner

from mlops_iac.cli import main
from mlops_iac.components import deploy
from mlops_iac.plan import StackPlan
from mlops_iac.plan import plan as make_plan
from mlops_iac.resolve import load

from .conftest import ROOT, require

PRODUCTION = ROOT / "examples" / "production"
GOLDEN = ROOT / "stacks"


class Mocks(pulumi.runtime.Mocks):
    def __init__(self) -> None:
        self.resources: list[pulumi.runtime.MockResourceArgs] = []

    def new_resource(self, args: pulumi.runtime.MockResourceArgs) -> tuple[str, dict[str, Any]]:
        self.resources.append(args)
        outputs = dict(args.inputs)
        if "RemoteImage" in args.typ:
            outputs["imageId"] = "sha256:" + "1" * 64
        if args.typ == "kubernetes:core/v1:Secret":  # the API server versions every object it stores
            outputs["metadata"] = {**outputs["metadata"], "resourceVersion": "4711"}
        if args.typ == "azure-native:containerinstance:ContainerGroup":  # Azure names the group's public IP
            ip = outputs["ipAddress"]
            fqdn = f"{ip['dnsNameLabel']}.abc123.{outputs['location']}.azurecontainer.io"
            outputs["ipAddress"] = {**ip, "fqdn": fqdn}
        if args.typ == "azure-native:app:ContainerApp":  # Azure names the app's ingress (a secret: it holds keys)
            config = outputs["configuration"] = copy.deepcopy(outputs["configuration"])  # the inputs stay as given
            name = args.inputs["containerAppName"]
            config.get("value", config)["ingress"]["fqdn"] = f"{name}.example.azurecontainerapps.io"
        return f"{args.name}-id", outputs

    def call(self, args: pulumi.runtime.MockCallArgs) -> dict[str, Any]:
        return {}

    def of(self, typ: str) -> list[pulumi.runtime.MockResourceArgs]:
        return [r for r in self.resources if r.typ == typ]


def stack_plan(target: str, folder: Path = PRODUCTION) -> StackPlan:
    (stack,) = make_plan(load(folder / "mlops.yaml").resolved, (target,)).stacks
    return stack


def run_program(stack: StackPlan, api_key: str | None = "s3cret") -> tuple[Mocks, dict[str, Any]]:
    mocks = Mocks()
    pulumi.runtime.set_mocks(mocks, project="shop", stack=stack.target.name, preview=False)
    exported: dict[str, Any] = {}

    @pulumi.runtime.test
    def program() -> None:
        exported.update(deploy(stack, api_key=api_key))

    program()
    return mocks, exported


def test_kubernetes_components_create_the_immutable_set_per_version() -> None:
    mocks, exported = run_program(stack_plan("prod"))
    deployments = mocks.of("kubernetes:apps/v1:Deployment")
    assert sorted(d.name for d in deployments) == ["iris-v1-8f03a2cb-deployment", "iris-v2-8e247c07-deployment"]
    spec = deployments[0].inputs["spec"]
    pod = spec["template"]["spec"]
    (container,) = pod["containers"]
    assert container["image"].startswith("ghcr.io/acme/models/iris@sha256:")  # by digest
    assert spec["strategy"]["rollingUpdate"]["maxUnavailable"] == 0
    for probe in ("startupProbe", "readinessProbe"):
        assert container[probe]["httpGet"]["path"] == "/v2/health/ready"
    assert container["livenessProbe"]["httpGet"]["path"] == "/v2/health/live"
    security = container["securityContext"]
    assert security["runAsNonRoot"] and security["readOnlyRootFilesystem"]
    assert not security["allowPrivilegeEscalation"] and security["capabilities"]["drop"] == ["ALL"]
    assert pod["securityContext"]["seccompProfile"]["type"] == "RuntimeDefault"
    assert pod["automountServiceAccountToken"] is False and pod["topologySpreadConstraints"]
    assert container["resources"]["requests"]["cpu"].endswith("m")  # from the profile
    assert {e["name"] for e in container["env"]} == {"MLOPS_IAC_SERVER_SETTINGS", "MLOPS_IAC_API_KEY"}
    assert all(a.inputs["automountServiceAccountToken"] is False for a in mocks.of("kubernetes:core/v1:ServiceAccount"))
    hpa = mocks.of("kubernetes:autoscaling/v2:HorizontalPodAutoscaler")[0].inputs["spec"]
    assert hpa["minReplicas"] == 2 and hpa["maxReplicas"] >= 2  # replicas: {min: 2, max: auto}
    assert len(mocks.of("kubernetes:policy/v1:PodDisruptionBudget")) == 2
    assert len(mocks.of("kubernetes:networking.k8s.io/v1:NetworkPolicy")) == 2
    services = sorted(s.name for s in mocks.of("kubernetes:core/v1:Service"))
    assert services == ["iris-prod-service", "iris-v1-8f03a2cb-service", "iris-v2-8e247c07-service"]
    custom = {
        "HTTPRoute": mocks.of("kubernetes:gateway.networking.k8s.io/v1:HTTPRoute")[0].inputs,
        "ServiceMonitor": mocks.of("kubernetes:monitoring.coreos.com/v1:ServiceMonitor")[0].inputs,
    }
    assert len(mocks.of("mlops:k8s:ModelServer")) == 2 and len(mocks.of("mlops:k8s:ModelEndpoint")) == 1
    weights = {b["name"]: b["weight"] for b in custom["HTTPRoute"]["spec"]["rules"][-1]["backendRefs"]}
    assert weights == {"iris-v1-8f03a2cb": 90, "iris-v2-8e247c07": 10}
    assert custom["ServiceMonitor"]["spec"]["endpoints"] == [{"port": "metrics", "path": "/metrics", "interval": "30s"}]
    assert custom["ServiceMonitor"]["metadata"]["labels"]["release"] == "kube-prometheus-stack"
    # A first `up` on the cluster's terms: the namespace is made and admits only restricted pods;
    # the HPA owns the replica count; the image by digest is not pulled again.
    (namespace,) = mocks.of("kubernetes:core/v1:Namespace")
    assert namespace.inputs["metadata"]["name"] == "models"
    assert {
        namespace.inputs["metadata"]["labels"][f"pod-security.kubernetes.io/{m}"] for m in ("enforce", "audit", "warn")
    } == {"restricted"}
    assert "replicas" not in spec and container["imagePullPolicy"] == "IfNotPresent"
    assert pod["terminationGracePeriodSeconds"] >= 10 + 25 and container["lifecycle"]["preStop"]["exec"]
    # Rotating the key updates its Secret, whose new resourceVersion changes the pod template.
    assert spec["template"]["metadata"]["annotations"]["mlops-iac.dev/api-key-version"] == "4711"
    (secret,) = mocks.of("kubernetes:core/v1:Secret")
    wrapped = secret.inputs["stringData"]  # Pulumi's secret envelope: encrypted in state, never plain
    assert wrapped["4dabf18193072939515e22adb298388d"] == "1b47061264138c4ac30d75fd1eb44270"
    assert wrapped["value"] == {"apiKey": "s3cret"}
    assert set(exported) == {"iris-v1-8f03a2cb", "iris-v2-8e247c07"}


def test_auth_key_needs_a_pulumi_secret() -> None:
    with pytest.raises(Exception, match="pulumi config set --secret mlops:apiKey"):
        run_program(stack_plan("prod"), api_key=None)


def test_children_have_their_component_as_parent() -> None:
    from mlops_iac.components.kubernetes import ModelServer, ModelServerArgs

    stack = stack_plan("prod")
    pulumi.runtime.set_mocks(Mocks(), project="shop", stack="prod", preview=False)
    dep = stack.deployments[0]

    @pulumi.runtime.test
    def program() -> pulumi.Output[list[str]]:
        server = ModelServer("x", ModelServerArgs("shop", stack.target.spec, dep, dep.versions[0]))  # type: ignore[arg-type]
        urns = [r.urn for r in server.resources.values()]
        return pulumi.Output.all(*urns).apply(check)

    def check(urns: list[str]) -> list[str]:
        assert len(urns) == 8 and all("mlops:k8s:ModelServer$" in urn for urn in urns), urns
        return urns

    program()


def test_docker_component_for_an_edge_device() -> None:
    mocks, exported = run_program(stack_plan("edge"))
    (image,) = mocks.of("docker:index/remoteImage:RemoteImage")
    assert image.inputs["name"].startswith("ghcr.io/acme/models/iris@sha256:")
    (container,) = mocks.of("docker:index/container:Container")
    c = container.inputs
    assert c["image"] == "sha256:" + "1" * 64 and c["restart"] == "unless-stopped" and c["readOnly"]
    assert c["memory"] == 256 and c["cpus"] == "1"  # explicit 256Mi; CPU limit 2 x 500m
    assert c["ports"] == [{"internal": 8080, "external": 8080}, {"internal": 8081, "external": 9080}]  # REST, gRPC
    assert c["healthcheck"]["tests"][-1] == "mlops_iac.serving.health"
    assert c["capabilities"]["drops"] == ["ALL"] and c["user"] == "10001:10001"
    assert c["volumes"][0]["containerPath"] == "/data"
    settings = json.loads(c["envs"][0].split("=", 1)[1])
    assert settings["models"][0]["digest"].startswith("sha256:") and settings["collection"]["sample_rate"] == 0.05
    assert settings["grpc_port"] == 8081
    assert exported == {"iris-edge-v1": 8080, "iris-edge-v1-grpc": 9080}
    (provider,) = mocks.of("pulumi:providers:docker")
    assert provider.inputs["host"] == "ssh://deploy@edge-01"


def test_golden_stacks_are_fresh(tmp_path: Path) -> None:
    """stacks/ is what `mlops-iac synth` makes of examples/production; update with MLOPS_IAC_UPDATE_GOLDEN=1."""
    out = GOLDEN if os.environ.get("MLOPS_IAC_UPDATE_GOLDEN") else tmp_path / "stacks"
    result = CliRunner().invoke(
        main, ["synth", "-f", str(PRODUCTION / "mlops.yaml"), "--out", str(out), "--no-contexts"]
    )
    assert result.exit_code == 0, result.output
    fresh = {p.relative_to(out).as_posix(): p.read_bytes() for p in out.rglob("*") if p.is_file()}
    golden = {p.relative_to(GOLDEN).as_posix(): p.read_bytes() for p in GOLDEN.rglob("*") if p.is_file()}
    assert fresh == golden, "stacks/ is stale: run MLOPS_IAC_UPDATE_GOLDEN=1 pytest tests/test_stacks.py"
    main_py = (GOLDEN / "__main__.py").read_text()
    assert "pulumi.Config" in main_py and "deploy(plan" in main_py and "get_secret" in main_py
    assert "s3cret" not in json.dumps({k: v.decode(errors="replace") for k, v in golden.items()})


def _render(folder: Path, target: str = "prod") -> list[dict[str, Any]]:
    result = CliRunner().invoke(main, ["render", "-f", str(folder / "mlops.yaml"), "--target", target])
    assert result.exit_code == 0, result.output
    return [d for d in yaml.safe_load_all(result.stdout.split("\n", 1)[1]) if d]


def test_rendered_manifests_pass_kubernetes_validate_and_checkov(tmp_path: Path) -> None:
    import kubernetes_validate

    objects = _render(PRODUCTION)
    validated = 0
    for obj in objects:
        if obj["kind"] in ("HTTPRoute", "ServiceMonitor", "PrometheusRule"):
            continue  # custom resources: kubernetes-validate ships only the core schemas
        kubernetes_validate.validate(obj, "1.30.0", strict=True)
        validated += 1
    assert validated == 17  # the namespace, 7 per version, the stable Service and the dashboard
    report = checkov_kubernetes(objects, tmp_path / "prod.yaml")
    assert report["summary"]["failed"] == 0, [c["check_id"] for c in report["results"]["failed_checks"]]
    skipped = {c["check_id"] for c in report["results"]["skipped_checks"]}
    assert skipped <= {"CKV_K8S_35"}  # each skip is justified in an annotation beside it


def test_a_version_change_adds_keeps_and_removes_exactly(tmp_path: Path) -> None:
    folder = tmp_path / "prod"
    shutil.copytree(PRODUCTION, folder)
    spec = folder / "mlops.yaml"
    original = spec.read_text()

    def objects(text: str) -> dict[tuple[str, str], dict[str, Any]]:
        spec.write_text(text)
        return {(o["kind"], o["metadata"]["name"]): o for o in _render(folder)}

    canary = "    versions: [1, 2]\n    traffic: {1: 90, 2: 10}     # canary: 10% to version 2\n"
    only_v1 = objects(original.replace(canary, "    version: 1\n"))
    both = objects(original)
    only_v2 = objects(original.replace(canary, "    version: 2\n"))
    v1 = {k for k in only_v1 if "iris-v1-" in k[1]}
    v2 = {k for k in both if "iris-v2-" in k[1]}
    assert len(v1) == len(v2) == 8
    # Blue-green: adding version 2 adds its 8 objects and leaves version 1's untouched.
    assert set(both) - set(only_v1) == v2
    assert all(both[k] == only_v1[k] for k in v1)
    # Only the traffic split and the stable endpoint may change while traffic moves.
    changed = {k for k in set(both) & set(only_v1) if both[k] != only_v1[k]}
    assert changed == {("HTTPRoute", "iris-prod")}
    assert ("PrometheusRule", "iris-prod") in both and ("ConfigMap", "iris-prod-dashboard") in both
    # Version 1 goes only when it leaves the file.
    assert set(both) - set(only_v2) == v1 and all(both[k] == only_v2[k] for k in v2)


def checkov_kubernetes(objects: list[dict[str, Any]], path: Path) -> dict[str, Any]:
    """checkov's JSON report on the objects, written to `path` as one YAML stream."""
    checkov = os.environ.get("MLOPS_IAC_CHECKOV") or str(ROOT / ".venv-checkov/bin/checkov")
    if not Path(checkov).exists():
        require("checkov (scripts/test.sh puts it in .venv-checkov)")
    path.write_text(yaml.safe_dump_all(objects))
    scan = subprocess.run(
        [checkov, "--framework", "kubernetes", "-f", str(path), "--skip-download", "--output", "json", "--compact"],
        capture_output=True,
        text=True,
        timeout=600,
    )
    return json.loads(scan.stdout)  # type: ignore[no-any-return]
