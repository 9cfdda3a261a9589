"""The Docker component of a batch deployment: a one-shot container that scores and exits
(`restart: no`, not required to keep running), with the server's image and restrictions.
Its data volume (or `volumeClaim`, a named volume or host folder) is mounted at /data."""

from __future__ import annotations

from dataclasses import dataclass

import pulumi
import pulumi_docker as docker

from ..artifacts import canonical_json
from ..batch_manifests import PYTHON, scoring_args
from ..contract import SETTINGS_ENV, UID
from ..manifests import server_settings, version_name
from ..pinned import BuiltDeployment


@dataclass
class DockerBatchJobArgs:
    deployment: BuiltDeployment


class DockerBatchJob(pulumi.ComponentResource):
    def __init__(self, name: str, args: DockerBatchJobArgs, opts: pulumi.ResourceOptions | None = None) -> None:
        super().__init__("mlops:docker:BatchJob", name, None, opts)
        dep = args.deployment
        (version,) = dep.versions
        assert dep.batch is not None  # only a `kind: batch` deployment runs as a one-shot container
        child = pulumi.ResourceOptions(parent=self)
        cname = version_name(dep.model, version)
        self.image = docker.RemoteImage(f"{cname}-image", name=version.image, keep_locally=True, opts=child)
        volume = dep.batch.volume_claim or f"{cname}-data"
        settings = canonical_json(server_settings(dep, version, version.onnx_digest).model_dump(mode="json"))
        hw = version.hardware
        self.container = docker.Container(
            f"{cname}-batch",
            opts=child,
            name=f"{cname}-batch",
            image=self.image.image_id,
            entrypoints=[PYTHON, "-m", "mlops_iac.scoring"],
            command=scoring_args(dep.batch, shards=False),
            restart="no",
            must_run=False,
            attach=False,
            envs=[f"{SETTINGS_ENV}={settings.strip()}"],
            user=f"{UID}:{UID}",
            read_only=True,
            memory=-(-hw.memory_limit_bytes // 2**20),
            cpus=f"{hw.cpu_limit_millis / 1000:g}",
            capabilities=docker.ContainerCapabilitiesArgs(drops=["ALL"]),
            security_opts=["no-new-privileges:true"],
            network_mode="none",
            tmpfs={"/tmp": "rw,size=64m"},  # noqa: S108 - the container's own /tmp, in memory
            volumes=[docker.ContainerVolumeArgs(volume_name=volume, container_path="/data")],
            labels=[
                docker.ContainerLabelArgs(label="dev.mlops-iac.deployment", value=dep.name),
                docker.ContainerLabelArgs(label="dev.mlops-iac.version", value=str(version.number)),
            ],
        )
        self.register_outputs({"name": f"{cname}-batch", "image": version.image})
