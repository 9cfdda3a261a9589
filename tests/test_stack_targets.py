"""The stacks on a cluster's and a Docker host's terms: what a bare cluster gets, what needs
CRDs, that `render` and the components make the same objects, routes that keep every version
addressable, and a Docker promotion whose ports never move or overlap."""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import pulumi
import pytest
from click.testing import CliRunner

from mlops_iac import manifests
from mlops_iac.cli import main
from mlops_iac.errors import ConfigError
from mlops_iac.model_manifests import target_objects
from mlops_iac.resolve import load
from mlops_iac.spec.targets import KubernetesTarget

from .conftest import ROOT
from .test_stack_program import PLANS, Mocks, deployed_plans, run_generated
from .test_stacks import run_program

PRODUCTION = ROOT / "examples" / "production"
PROD_TARGET = PRODUCTION.joinpath("mlops.yaml").read_text().split("  prod:\n", 1)[1].split("  edge:\n", 1)[0]
CANARY = "    versions: [1, 2]\n    traffic: {1: 90, 2: 10}     # canary: 10% to version 2\n"
CRDS = {"HTTPRoute", "ServiceMonitor", "PrometheusRule"}


def variant(tmp_path: Path, prod: str | None = None, canary: str | None = None) -> Path:
    """A copy of examples/production with the prod target (and the canary lines) replaced."""
    folder = tmp_path / "project"
    shutil.copytree(PRODUCTION, folder)
    text = (folder / "mlops.yaml").read_text()
    if prod is not None:
        text = text.replace(PROD_TARGET, prod)
    if canary is not None:
        text = text.replace(CANARY, canary)
    (folder / "mlops.yaml").write_text(text)
    return folder


def synth_and_run(folder: Path, stack: str) -> Mocks:
    out = folder / "stacks"
    result = CliRunner().invoke(main, ["synth", "-f", str(folder / "mlops.yaml"), "--out", str(out), "--no-contexts"])
    assert result.exit_code == 0, result.output
    mocks, _ = run_generated(out, "shop", stack)
    return mocks


def kinds(mocks: Mocks) -> dict[str, list[dict[str, Any]]]:
    out: dict[str, list[dict[str, Any]]] = {}
    for r in mocks.resources:
        if r.typ.startswith("kubernetes:") and "providers" not in r.typ:
            out.setdefault(r.typ.rsplit(":", 1)[1], []).append(r.inputs)
    return out


def normal(value: Any) -> Any:
    """Numbers as Kubernetes reads them: Pulumi's wire format carries every number as a float."""
    if isinstance(value, dict):
        return {k: normal(v) for k, v in value.items()}
    if isinstance(value, list):
        return [normal(v) for v in value]
    if isinstance(value, float) and value.is_integer():
        return int(value)
    return value


def test_render_and_the_components_make_the_same_objects() -> None:
    plan = PLANS["prod"]
    mocks, _ = run_program(plan)
    made = {(i["kind"], i["metadata"]["name"]): i for items in kinds(mocks).values() for i in items}
    (secret,) = [k for k in made if k[0] == "Secret"]  # the one object render leaves to the user
    made.pop(secret)
    for (kind, _), obj in made.items():
        if kind == "Deployment":  # the component alone knows the key's Secret version
            assert obj["spec"]["template"]["metadata"]["annotations"].pop(manifests.API_KEY_VERSION)
    assert isinstance(plan.target.spec, KubernetesTarget)
    rendered = {
        (o["kind"], o["metadata"]["name"]): o for o in target_objects(plan.project, plan.target.spec, plan.deployments)
    }
    assert normal(made) == rendered
    assert {k for k, _ in rendered} == {
        "Namespace",
        "ServiceAccount",
        "ConfigMap",
        "Deployment",
        "Service",
        "PodDisruptionBudget",
        "HorizontalPodAutoscaler",
        "NetworkPolicy",
        *CRDS,
    }


BARE = "    kind: kubernetes\n    context: kind-kind\n    namespace: models\n"


def test_a_bare_cluster_gets_no_object_that_needs_a_crd(tmp_path: Path) -> None:
    """A fresh kind cluster, or AKS/EKS without extra CRDs: the program creates only core kinds."""
    mocks = synth_and_run(variant(tmp_path, BARE), "prod")
    made = kinds(mocks)
    assert not CRDS & set(made) and "CustomResource" not in str([r.typ for r in mocks.resources])
    (namespace,) = made["Namespace"]
    assert namespace["metadata"]["labels"]["pod-security.kubernetes.io/enforce"] == "restricted"
    assert {d["metadata"]["namespace"] for items in made.values() for d in items if "namespace" in d["metadata"]} == {
        "models"
    }
    assert len(made["Deployment"]) == 2 and len(made["Service"]) == 3
    # Metrics stay reachable for a Prometheus in `monitoring`, and only there.
    policy = made["NetworkPolicy"][0]["spec"]["ingress"]
    monitoring = {"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "monitoring"}}}
    assert policy[1] == {"from": [monitoring], "ports": [{"port": 8082, "protocol": "TCP"}]}


def test_an_existing_namespace_and_pull_secrets(tmp_path: Path) -> None:
    target = (
        "    kind: kubernetes\n    namespace: {name: team-a, create: false}\n    imagePullSecrets: [ghcr]\n"
        "    monitoring: {namespace: observability}\n"
    )
    made = kinds(synth_and_run(variant(tmp_path, target), "prod"))
    assert "Namespace" not in made
    pod = made["Deployment"][0]["spec"]["template"]["spec"]
    assert pod["imagePullSecrets"] == [{"name": "ghcr"}]
    selector = made["NetworkPolicy"][0]["spec"]["ingress"][1]["from"][0]["namespaceSelector"]
    assert selector == {"matchLabels": {"kubernetes.io/metadata.name": "observability"}}
    assert {d["metadata"]["namespace"] for d in made["Deployment"]} == {"team-a"}
    # `default` always exists: the stack neither creates nor relabels it.
    assert not KubernetesTarget(kind="kubernetes").creates_namespace
    assert manifests.namespace_objects("shop", KubernetesTarget(kind="kubernetes")) == []


def test_the_review_says_what_is_not_deployed_and_lists_every_kind(tmp_path: Path) -> None:
    folder = variant(tmp_path, BARE)
    from mlops_iac.lock import Lock
    from mlops_iac.review import Side, review

    ws = load(folder / "mlops.yaml")
    text = review(Side(None, Lock()), Side(ws.resolved, ws.lock))
    assert "not deployed: HTTPRoute" in text and "by replica count, not by `traffic`" in text
    assert "not deployed: ServiceMonitor, PrometheusRule" in text
    assert "weights are not honoured on a docker target" not in text  # edge runs one version
    full = load(PRODUCTION / "mlops.yaml")
    text = review(Side(None, Lock()), Side(full.resolved, full.lock))
    prod = full.resolved.target("prod").spec
    assert isinstance(prod, KubernetesTarget)
    every = {
        o["kind"]
        for o in target_objects("shop", prod, tuple(d for d in full.resolved.deployments if d.target == "prod"))
    }
    listed = {kind for kind in every if f"`{kind}/" in text}
    assert listed == every, every - listed
    assert "not deployed" not in text
    # gRPC: in the cluster on the deployment's Service, beside the gateway's REST route.
    assert "gRPC (port 8081, `grpc`) is reached in the cluster on `Service/iris-prod`" in text
    assert "not `traffic`" in text.split("Service/iris-prod` or", 1)[1].split("\n", 1)[0]
    assert "not published on the host" not in text  # the edge target sets grpcPort
    edge = next(d for d in full.resolved.deployments if d.target == "edge")
    v2 = next(d for d in full.resolved.deployments if d.target == "prod").versions[1]
    canary = edge.model_copy(update={"versions": (edge.versions[0], v2)})
    resolved = full.resolved.model_copy(update={"deployments": (canary,)})
    text = review(Side(None, Lock()), Side(resolved, full.lock))
    assert "weights are not honoured on a docker target" in text


def test_two_deployments_of_one_model_on_one_target_are_a_located_error(tmp_path: Path) -> None:
    folder = variant(tmp_path)
    text = (folder / "mlops.yaml").read_text()
    extra = "  - name: iris-shadow\n    model: iris\n    version: 2\n    target: prod\n"
    (folder / "mlops.yaml").write_text(text.replace("\nmonitoring:", extra + "\nmonitoring:"))
    with pytest.raises(ConfigError) as caught:
        load(folder / "mlops.yaml")
    (problem,) = [p for p in caught.value.problems if "twice" in p.message]
    assert problem.path == "deployments[2].target" and problem.line > 0
    assert "deployments[0] (iris-prod)" in problem.allowed


def test_every_version_stays_addressable_through_the_route() -> None:
    plan = PLANS["prod"]
    assert isinstance(plan.target.spec, KubernetesTarget)
    (route,) = [o for o in target_objects("shop", plan.target.spec, plan.deployments) if o["kind"] == "HTTPRoute"]
    rules = route["spec"]["rules"]
    for rule, number, name in zip(rules, (1, 2), ("iris-v1-8f03a2cb", "iris-v2-8e247c07"), strict=False):
        assert rule["matches"][0]["path"]["value"] == f"/v2/models/iris/versions/{number}"
        assert rule["matches"][1]["headers"] == [{"type": "Exact", "name": "x-model-version", "value": str(number)}]
        assert rule["backendRefs"] == [{"name": name, "port": 8080}]
    assert [b["weight"] for b in rules[-1]["backendRefs"]] == [90, 10] and len(rules) == 3


def test_the_endpoint_waits_for_every_versions_deployment() -> None:
    """The stable Service and the HTTPRoute are registered with the Deployments as dependencies,
    so Pulumi creates or updates them only once every version is available (pulumi-kubernetes
    waits for a Deployment's rollout), and no weight moves to pods that are not ready."""
    from pulumi.runtime.settings import get_monitor

    from mlops_iac.components import deploy

    pulumi.runtime.set_mocks(Mocks(), project="shop", stack="prod", preview=False)
    monitor = get_monitor()
    dependencies: dict[str, list[str]] = {}
    register = monitor.RegisterResource

    def recording(request: Any) -> Any:  # the engine's view: each resource with what it waits for
        dependencies[request.name] = list(request.dependencies)
        return register(request)

    monitor.RegisterResource = recording

    @pulumi.runtime.test
    def program() -> None:
        deploy(PLANS["prod"], api_key="s3cret")

    program()
    for name in ("iris-prod-service", "iris-prod-httproute"):
        waits = [urn.rsplit("::", 1)[1] for urn in dependencies[name]]
        assert {"iris-v1-8f03a2cb-deployment", "iris-v2-8e247c07-deployment"} <= set(waits), waits


def test_settings_are_an_immutable_configmap_named_by_their_content(tmp_path: Path) -> None:
    def settings(folder: Path) -> tuple[str, str]:
        plan = deployed_plans(folder)["prod"]
        assert isinstance(plan.target.spec, KubernetesTarget)
        objects = target_objects("shop", plan.target.spec, plan.deployments)
        v1 = [o for o in objects if o["metadata"]["name"].startswith("iris-v1-")]
        (config,) = [o for o in v1 if o["kind"] == "ConfigMap"]
        (deployment,) = [o for o in v1 if o["kind"] == "Deployment"]
        env = deployment["spec"]["template"]["spec"]["containers"][0]["env"][0]["valueFrom"]["configMapKeyRef"]
        assert config["immutable"] is True and env["name"] == config["metadata"]["name"]
        return config["metadata"]["name"], config["data"]["server.json"]

    before, text = settings(PRODUCTION)
    assert '"metrics_port": 8082' in text
    folder = variant(tmp_path)
    spec = folder / "mlops.yaml"
    spec.write_text(spec.read_text().replace("sampleRate: 0.05", "sampleRate: 0.2"))
    after, _ = settings(folder)
    assert before != after and before.rsplit("-", 1)[0] == after.rsplit("-", 1)[0]


def test_the_grace_period_covers_the_servers_drain() -> None:
    from mlops_iac.serving.run import DRAIN_SECONDS

    assert manifests.DRAIN_SECONDS == DRAIN_SECONDS
    assert manifests.GRACE_SECONDS > manifests.PRESTOP_SECONDS + DRAIN_SECONDS
    # preStop runs the image's own interpreter, the one its entrypoint runs.
    plan = PLANS["prod"]
    assert isinstance(plan.target.spec, KubernetesTarget)
    (deployment, *_) = [
        o for o in target_objects("shop", plan.target.spec, plan.deployments) if o["kind"] == "Deployment"
    ]
    command = deployment["spec"]["template"]["spec"]["containers"][0]["lifecycle"]["preStop"]["exec"]["command"]
    dockerfile = (ROOT / "templates" / "docker" / "base.Dockerfile.j2").read_text()
    assert f'ENTRYPOINT ["{command[0]}", "-m", "mlops_iac.serving"' in dockerfile


EDGE_V1 = "  - name: iris-edge\n    model: iris\n    version: 1\n    target: edge\n"


@pytest.mark.parametrize("platform", ["linux/arm64"])
def test_a_docker_promotion_keeps_each_versions_port(tmp_path: Path, platform: str) -> None:
    """v1 alone, then v2 beside it as a canary, then v2 alone: each version keeps its port."""
    steps = {
        "v1": "    version: 1\n",
        "canary": "    versions: [1, 2]\n    traffic: {1: 90, 2: 10}\n",
        "v2": "    version: 2\n",
    }
    seen: list[dict[str, int]] = []
    for step, lines in steps.items():
        folder = tmp_path / step
        variant(folder)
        spec = folder / "project" / "mlops.yaml"
        text = spec.read_text().replace("    port: 8080\n", f"    port: 8080\n    platform: {platform}\n")
        spec.write_text(text.replace(EDGE_V1, EDGE_V1.replace("    version: 1\n", lines)))
        mocks = synth_and_run(folder / "project", "edge")
        containers = {
            r.inputs["name"]: r.inputs for r in mocks.resources if r.typ == "docker:index/container:Container"
        }
        ports = {name: c["ports"][0]["external"] for name, c in containers.items()}
        grpc_ports = {name: c["ports"][1]["external"] for name, c in containers.items()}
        assert all(c["ports"][1]["internal"] == 8081 for c in containers.values())
        assert {n: p - 1000 for n, p in grpc_ports.items()} == ports  # grpcPort 9080 beside port 8080
        assert len(set(ports.values())) == len(ports)  # never one port held twice
        assert all(c["wait"] is True and c["waitTimeout"] > 0 for c in containers.values())
        images = [r.inputs for r in mocks.resources if r.typ == "docker:index/remoteImage:RemoteImage"]
        assert {i["platform"] for i in images} == {platform}
        (provider,) = [r.inputs for r in mocks.resources if r.typ == "pulumi:providers:docker"]
        assert "BatchMode=yes" in provider["sshOpts"]
        volumes = [r.inputs["name"] for r in mocks.resources if r.typ == "docker:index/volume:Volume"]
        assert sorted(volumes) == sorted(f"{n}-data" for n in containers)
        seen.append(ports)
    assert seen == [
        {"iris-v1-8f03a2cb": 8080},
        {"iris-v1-8f03a2cb": 8080, "iris-v2-8e247c07": 8081},
        {"iris-v2-8e247c07": 8081},
    ]


def test_docker_ports_of_two_deployments_that_would_collide_are_refused(tmp_path: Path) -> None:
    from mlops_iac.errors import PlanError
    from mlops_iac.plan import plan as make_plan

    ws = load(PRODUCTION / "mlops.yaml")
    edge = next(d for d in ws.resolved.deployments if d.target == "edge")
    twin = edge.model_copy(update={"name": "other-edge", "model": "other"})
    resolved = ws.resolved.model_copy(update={"deployments": (*ws.resolved.deployments, twin)})
    with pytest.raises(PlanError, match="host port 8080, which iris-edge v1 holds"):
        make_plan(resolved)


def test_a_grpc_host_port_that_collides_is_refused() -> None:
    """Version 2's REST port is version 1's gRPC port when grpcPort = port + 1: refused at plan time."""
    from mlops_iac.errors import PlanError
    from mlops_iac.plan import plan as make_plan

    ws = load(PRODUCTION / "mlops.yaml")
    edge = next(t for t in ws.resolved.targets if t.name == "edge")
    crowded = edge.model_copy(update={"spec": edge.spec.model_copy(update={"grpc_port": 8081})})
    dep = next(d for d in ws.resolved.deployments if d.target == "edge")
    two = dep.model_copy(update={"versions": next(d for d in ws.resolved.deployments if d.target == "prod").versions})
    resolved = ws.resolved.model_copy(
        update={
            "targets": tuple(crowded if t.name == "edge" else t for t in ws.resolved.targets),
            "deployments": tuple(two if d is dep else d for d in ws.resolved.deployments),
        }
    )
    with pytest.raises(PlanError, match=r"v2 would listen on host port 8081, which iris-edge v1 \(gRPC\) holds"):
        make_plan(resolved)


def test_the_real_server_runs_with_the_settings_and_environment_a_pod_gets(tmp_path: Path) -> None:
    """The ConfigMap's server.json and the pod's environment, given to the real server process:
    it starts with them (auth on, the gRPC and metrics ports set), answers on the versioned path
    as onnxruntime does in process, and refuses a request without the key."""
    import json

    import numpy as np

    from mlops_iac.convert.onnx_tools import run, session
    from mlops_iac.serving.runtime import sha256_of

    from .server_fixtures import build_models, running_server

    models = build_models(tmp_path / "models")
    plan = PLANS["prod"]
    assert isinstance(plan.target.spec, KubernetesTarget)
    objects = target_objects("shop", plan.target.spec, plan.deployments)
    (deployment,) = [o for o in objects if o["kind"] == "Deployment" and o["metadata"]["name"].startswith("iris-v2-")]
    container = deployment["spec"]["template"]["spec"]["containers"][0]
    ref = container["env"][0]["valueFrom"]["configMapKeyRef"]
    (config,) = [o for o in objects if o["kind"] == "ConfigMap" and o["metadata"]["name"] == ref["name"]]
    settings = json.loads(config["data"][ref["key"]])
    assert (settings["auth"], settings["metrics_port"], settings["grpc_port"]) == (True, 8082, 8081)
    # What the image holds at /app/model and the pod's /data volume, here in the test's folder.
    model = models.folder / "iris.onnx"
    settings["models"][0] |= {"path": str(model), "digest": sha256_of(model)}
    settings["collection"]["path"] = str(tmp_path / "data" / "requests.jsonl")
    assert [e["name"] for e in container["env"]] == ["MLOPS_IAC_SERVER_SETTINGS", "MLOPS_IAC_API_KEY"]
    env = {"MLOPS_IAC_SERVER_SETTINGS": json.dumps(settings), "MLOPS_IAC_API_KEY": "s3cret"}
    x = models.iris[:4]
    request = {"inputs": [{"name": "input", "shape": list(x.shape), "datatype": "FP32", "data": x.ravel().tolist()}]}
    with running_server(models, {"models": [settings["models"][0]]}, env=env) as server:
        status, _ = server.json("POST", "/v2/models/iris/versions/2/infer", request)
        assert status == 401
        status, answer = server.json("POST", "/v2/models/iris/versions/2/infer", request, Authorization="Bearer s3cret")
        assert status == 200, answer
        import tritonclient.grpc as grpcclient

        tensor = grpcclient.InferInput("input", list(x.shape), "FP32")
        tensor.set_data_from_numpy(x)
        with grpcclient.InferenceServerClient(f"127.0.0.1:{settings['grpc_port']}") as client:
            over_grpc = client.infer("iris", [tensor], model_version="2", headers={"authorization": "Bearer s3cret"})
        assert over_grpc.as_numpy("label").tolist() == run(session(model.read_bytes()), x)[0].tolist()
    label = next(o for o in answer["outputs"] if o["name"] == "label")
    assert label["data"] == run(session(model.read_bytes()), x)[0].tolist()
    assert answer["model_version"] == "2" and np.asarray(label["data"]).shape == (4,)
