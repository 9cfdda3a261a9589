"""Batch deployments (`kind: batch`) in mlops.yaml: validation with locations, the indexed Job
or CronJob in `render` and in the Pulumi stack, valid for Kubernetes and clean for checkov."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import pytest
import yaml
from click.testing import CliRunner

from mlops_iac.cli import main
from mlops_iac.errors import ConfigError
from mlops_iac.resolve import load

from .test_build import docker_engine  # noqa: F401 - a fixture
from .test_stacks import PRODUCTION, run_program, stack_plan

BATCH = """
  - name: iris-nightly
    kind: batch
    model: iris
    version: 2
    target: prod
    hardware: {cpu: 2, memory: 1Gi}
    batch:
      input: [customers/*.parquet]
      output: scores/
      schedule: "0 2 * * *"
      parallelism: 4
      volumeClaim: customer-data
  - name: iris-backfill
    kind: batch
    model: iris
    version: 1
    target: prod
    batch: {input: [history.csv], output: backfill, errorThreshold: -1}
"""


def project(tmp_path: Path, extra: str = BATCH) -> Path:
    folder = tmp_path / "prod"
    shutil.copytree(PRODUCTION, folder)
    text = (folder / "mlops.yaml").read_text()
    (folder / "mlops.yaml").write_text(text.replace("\nmonitoring:", extra + "\nmonitoring:", 1))
    return folder


def render(folder: Path) -> list[dict[str, Any]]:
    result = CliRunner().invoke(main, ["render", "-f", str(folder / "mlops.yaml"), "--target", "prod"])
    assert result.exit_code == 0, result.output
    return [d for d in yaml.safe_load_all(result.stdout.split("\n", 1)[1]) if d]


def test_batch_deployments_render_an_indexed_job_and_a_cronjob(tmp_path: Path) -> None:
    objects = render(project(tmp_path))
    cron = next(o for o in objects if o["kind"] == "CronJob")
    job = next(o for o in objects if o["kind"] == "Job")
    assert cron["spec"]["schedule"] == "0 2 * * *" and cron["spec"]["concurrencyPolicy"] == "Forbid"
    spec = cron["spec"]["jobTemplate"]["spec"]
    assert (spec["completionMode"], spec["completions"], spec["parallelism"]) == ("Indexed", 4, 4)
    pod = spec["template"]["spec"]
    (container,) = pod["containers"]
    server = next(o for o in objects if o["kind"] == "Deployment" and o["metadata"]["name"].startswith("iris-v2-"))
    served = server["spec"]["template"]["spec"]["containers"][0]
    assert container["image"] == served["image"] and container["securityContext"] == served["securityContext"]
    assert container["resources"]["requests"] == {"cpu": "2000m", "memory": "1024Mi"}
    assert container["command"] == ["/opt/venv/bin/python", "-m", "mlops_iac.scoring"]
    args = container["args"]
    assert args[args.index("--input") + 1] == "/data/customers/*.parquet"
    assert args[args.index("--output") + 1] == "/data/scores/" and args[args.index("--shards") + 1] == "4"
    assert "--resume" in args  # a retried pod finishes its parts instead of starting over
    assert pod["volumes"][0] == {"name": "data", "persistentVolumeClaim": {"claimName": "customer-data"}}
    assert (
        job["spec"]["completions"] == 1
        and "--error-threshold" in job["spec"]["template"]["spec"]["containers"][0]["args"]
    )
    config = next(o for o in objects if o["kind"] == "ConfigMap" and o["metadata"]["name"] == cron["metadata"]["name"])
    assert json.loads(config["data"]["server.json"])["models"][0]["version"] == 2


def test_batch_manifests_pass_kubernetes_validate_and_checkov(tmp_path: Path) -> None:
    import kubernetes_validate

    objects = [
        o
        for o in render(project(tmp_path))
        if o["metadata"]["labels"].get("app.kubernetes.io/component") == "batch-scoring"
    ]
    assert sorted(o["kind"] for o in objects) == [
        "ConfigMap",
        "ConfigMap",
        "CronJob",
        "Job",
        "NetworkPolicy",
        "NetworkPolicy",
        "ServiceAccount",
        "ServiceAccount",
    ]
    for obj in objects:
        kubernetes_validate.validate(obj, "1.30.0", strict=True)
    from .test_stacks import checkov_kubernetes

    report = checkov_kubernetes(objects, tmp_path / "batch.yaml")
    assert report["summary"]["failed"] == 0, [c["check_id"] for c in report["results"]["failed_checks"]]
    assert report["summary"]["passed"] > 0


def test_the_stack_creates_the_same_job(tmp_path: Path) -> None:
    from mlops_iac.plan import StackPlan, stack_json

    # Through plan.json as plan() writes it (by alias) and the generated __main__.py reads it.
    written = stack_json(stack_plan("prod", project(tmp_path)))
    mocks, exported = run_program(StackPlan.model_validate_json(written))
    assert len(mocks.of("mlops:k8s:BatchJob")) == 2
    (cron,) = mocks.of("kubernetes:batch/v1:CronJob")
    rendered = next(o for o in render(project(tmp_path / "again")) if o["kind"] == "CronJob")
    assert (
        cron.inputs["spec"]["jobTemplate"]["spec"]["template"]["spec"]["containers"][0]["args"]
        == rendered["spec"]["jobTemplate"]["spec"]["template"]["spec"]["containers"][0]["args"]
    )
    assert exported["iris-nightly"].startswith("iris-v2-")


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (
            "  - {name: b1, kind: batch, model: iris, version: 1, target: prod}\n",
            "a batch deployment without batch settings",
        ),
        (
            "  - {name: b2, kind: batch, model: iris, version: 1, target: prod,\n"
            "     batch: {input: [a.csv], output: o, schedule: '61 * * * *'}}\n",
            "expected a cron schedule of 5 fields",
        ),
        (
            "  - {name: b3, model: iris, version: 1, target: prod, batch: {input: [a.csv], output: o}}\n",
            "batch settings on an online deployment",
        ),
        (
            "  - {name: b4, kind: batch, model: iris, versions: [1, 2], traffic: {1: 50, 2: 50}, target: prod,\n"
            "     batch: {input: [a.csv], output: o}}\n",
            "a batch deployment scores with one version",
        ),
    ],
)
def test_batch_settings_are_validated_with_locations(tmp_path: Path, extra: str, message: str) -> None:
    folder = project(tmp_path, extra)
    with pytest.raises(ConfigError) as caught:
        load(folder / "mlops.yaml")
    text = "\n".join(str(p) for p in caught.value.problems)
    assert message in text and "mlops.yaml:" in text and "deployments[2]" in text, text


def test_docker_target_runs_a_one_shot_container(tmp_path: Path) -> None:
    extra = (
        "  - {name: iris-edge-batch, kind: batch, model: iris, version: 1, target: edge,\n"
        "     batch: {input: [in/*.csv], output: out, volumeClaim: edge-data}}\n"
    )
    mocks, exported = run_program(stack_plan("edge", project(tmp_path, extra)))
    (container,) = [c for c in mocks.of("docker:index/container:Container") if c.name.endswith("-batch")]
    inputs = container.inputs
    assert inputs["entrypoints"] == ["/opt/venv/bin/python", "-m", "mlops_iac.scoring"]
    assert inputs["command"][inputs["command"].index("--input") + 1] == "/data/in/*.csv"
    assert (inputs["restart"], inputs["mustRun"], inputs["readOnly"], inputs["networkMode"]) == (
        "no",
        False,
        True,
        "none",
    )
    assert inputs["volumes"] == [{"volumeName": "edge-data", "containerPath": "/data"}]
    assert exported["iris-edge-batch"] == "one-shot" and exported["iris-edge-v1"] == 8080


SCORING = """
  - name: iris-score
    kind: batch
    model: iris
    version: 1
    target: cluster
    hardware: {cpu: 1, memory: 512Mi}
    batch: {input: [customers/*.parquet], output: scores, parallelism: 2, batchSize: 40, partRows: 40}
"""


@pytest.mark.integration
def test_the_jobs_pod_spec_runs_on_docker(
    converted: Path,
    docker_engine: str,  # noqa: F811
    oci_registry: Any,
    tmp_path: Path,
) -> None:
    """The indexed Job's pods, run with the docker flags that match their spec: the server's
    image (built with the scoring code), read-only root, user 10001, no capabilities, no
    network, the settings from the ConfigMap, JOB_COMPLETION_INDEX 0 and 1."""
    import numpy as np
    import pyarrow as pa
    import pyarrow.parquet as pq
    from sklearn.datasets import load_iris

    from mlops_iac.convert.onnx_tools import run, session
    from mlops_iac.registry import parse_ref
    from mlops_iac.workspace import project_registry

    from .test_build import docker

    base = f"{oci_registry.address}/base/python:3.11-bookworm"
    docker("tag", docker_engine, base)
    digest = next(w for w in docker("push", base).split() if w.startswith("sha256:"))
    spec = converted / "mlops.yaml"
    text = spec.read_text().replace(
        "registry:\n", f'build:\n  baseImage: "{base.rsplit(":", 1)[0]}@{digest}"\n\nregistry:\n', 1
    )
    text = text.replace("targets:\n", "targets:\n  cluster:\n    kind: kubernetes\n    namespace: scoring\n", 1)
    spec.write_text(text.replace("\nmonitoring:", SCORING + "\nmonitoring:", 1))
    built = CliRunner().invoke(main, ["build", "iris@1", "--push", f"{oci_registry.address}/models"])
    assert built.exit_code == 0, built.output
    rendered = CliRunner().invoke(main, ["render", "--target", "cluster"])
    assert rendered.exit_code == 0, rendered.output
    objects = [d for d in yaml.safe_load_all(rendered.stdout.split("\n", 1)[1]) if d]
    job = next(o for o in objects if o["kind"] == "Job")
    settings = next(o for o in objects if o["kind"] == "ConfigMap")["data"]["server.json"]
    pod = job["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    data = tmp_path / "data"
    (data / "customers").mkdir(parents=True)
    x = load_iris().data.astype(np.float32)
    for i, half in enumerate(np.array_split(np.arange(150), 2)):
        pq.write_table(
            pa.table({"id": half, **{f"x{j}": x[half, j] for j in range(4)}}), data / "customers" / f"{i}.parquet"
        )
    data.chmod(0o777)
    security = container["securityContext"]
    limits = container["resources"]["limits"]
    for index in range(job["spec"]["completions"]):
        docker(
            "run",
            "--rm",
            "--network",
            "none",
            "--read-only",
            "--user",
            f"{security['runAsUser']}:{security['runAsGroup']}",
            "--cap-drop",
            "ALL",
            "--security-opt",
            "no-new-privileges",
            "--tmpfs",
            "/tmp",
            "--memory",
            limits["memory"].replace("Mi", "m"),
            "--cpus",
            str(int(limits["cpu"].removesuffix("m")) / 1000),
            "-e",
            f"MLOPS_IAC_SERVER_SETTINGS={settings}",
            "-e",
            f"JOB_COMPLETION_INDEX={index}",
            "-v",
            f"{data}:/data",
            "--entrypoint",
            container["command"][0],
            container["image"],
            *container["command"][1:],
            *container["args"],
        )
    manifests = sorted((data / "scores").glob("manifest-*.json"))
    assert [m.name for m in manifests] == ["manifest-00000-of-00002.json", "manifest-00001-of-00002.json"]
    assert sum(json.loads(m.read_text())["summary"]["rows_out"] for m in manifests) == 150
    out = pq.read_table(sorted((data / "scores").glob("part-*.parquet")))
    registry, _ = project_registry(spec, against_lock=False)
    onnx = tmp_path / "iris.onnx"
    registry.pull(parse_ref("iris@1"), onnx, "onnx")
    order = np.argsort(out.column("id").to_numpy())
    assert out.column("id").to_numpy()[order].tolist() == list(range(150))
    np.testing.assert_array_equal(out.column("label").to_numpy()[order], run(session(onnx.read_bytes()), x)[0])
    built_tag = next(line.split()[1] for line in built.output.splitlines() if line.startswith("built "))
    docker("rmi", built_tag, base)  # untags the base; the engine keeps it under its own name
