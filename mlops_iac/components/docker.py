"""Docker component (pulumi-docker): a single host or an edge device reached through
DOCKER_HOST (ssh://user@edge-01). One container per model version, the image by digest.

Each version keeps its own host port (`host_port`: the target's port + version - 1) for as
long as it runs, so promoting a canary never moves it and never needs a port held by another
container. Its collected data lives in a named volume, `<version name>-data`, that is kept
when the version retires (Pulumi forgets it; `docker volume rm` deletes it).

A shadow version runs as one more such container, with its own port and no weight. The
deployment's containers then share a network of their own, and each served version's server
mirrors the shadow's share of its answered requests to the shadow's container by name
(`mirrors` in its settings): the copies never leave the engine's network."""

from __future__ import annotations

from dataclasses import dataclass

import pulumi
import pulumi_docker as docker

from ..artifacts import canonical_json
from ..contract import API_KEY_ENV, GRPC_PORT, PORT, SETTINGS_ENV, UID, version_host_port
from ..manifests import GRACE_SECONDS, PRESTOP_SECONDS, server_settings, version_name
from ..pinned import BuiltDeployment, BuiltVersion, PinnedDeployment, PinnedVersion
from ..serving.config import MirrorConfig
from ..spec.targets import DockerTarget

WAIT_SECONDS = 300  # `pulumi up` waits this long for the healthcheck to pass


def host_port(target: DockerTarget, version: PinnedVersion) -> int:
    """The version's port on the host: a function of the version alone, stable across changes."""
    return version_host_port(target.port, version.number)


def grpc_host_port(target: DockerTarget, version: PinnedVersion) -> int | None:
    """The version's gRPC port on the host, alike; None where the target publishes no gRPC."""
    return None if target.grpc_port is None else version_host_port(target.grpc_port, version.number)


def mirrors(dep: PinnedDeployment, version: PinnedVersion) -> tuple[MirrorConfig, ...]:
    """Where a served version's server mirrors to: each shadow version's container, by its name
    on the deployment's network (pure); a shadow itself mirrors nothing."""
    if version.number in dep.shadow:
        return ()
    return tuple(
        MirrorConfig(
            model=dep.model,
            version=v.number,
            percent=dep.shadow[v.number],
            url=f"http://{version_name(dep.model, v)}:{PORT}",
        )
        for v in dep.versions
        if v.number in dep.shadow
    )


@dataclass
class DockerModelServerArgs:
    deployment: BuiltDeployment
    version: BuiltVersion
    port: int  # on the host
    api_key: pulumi.Input[str] | None = None
    platform: str = "linux/amd64"
    grpc_port: int | None = None  # on the host; None: not published
    network: pulumi.Input[str] | None = None  # the deployment's network (with a shadow); None: the default


class DockerModelServer(pulumi.ComponentResource):
    def __init__(self, name: str, args: DockerModelServerArgs, opts: pulumi.ResourceOptions | None = None) -> None:
        super().__init__("mlops:docker:ModelServer", name, None, opts)
        dep, version = args.deployment, args.version
        child = pulumi.ResourceOptions(parent=self)
        cname = version_name(dep.model, version)
        self.image = docker.RemoteImage(
            f"{cname}-image", name=version.image, keep_locally=True, platform=args.platform, opts=child
        )
        # Kept when the version retires: the collected requests are the drift check's input.
        self.volume = docker.Volume(
            f"{cname}-data", name=f"{cname}-data", opts=pulumi.ResourceOptions(parent=self, retain_on_delete=True)
        )
        hw = version.hardware
        settings = server_settings(dep, version, version.onnx_digest).model_copy(
            update={"mirrors": mirrors(dep, version)}
        )
        envs: list[pulumi.Input[str]] = [f"{SETTINGS_ENV}=" + canonical_json(settings.model_dump(mode="json")).strip()]
        if dep.auth == "key":
            if args.api_key is None:
                raise ValueError(
                    f"deployment {dep.name} has auth: key; set the key with "
                    "`pulumi config set --secret mlops:apiKey <key>`"
                )
            envs.append(pulumi.Output.concat(f"{API_KEY_ENV}=", args.api_key))
        self.container = docker.Container(
            f"{cname}-container",
            opts=child,
            name=cname,
            image=self.image.image_id,
            command=["--port", str(PORT)],
            restart="unless-stopped",
            must_run=True,
            wait=True,
            wait_timeout=WAIT_SECONDS,  # `up` succeeds only once the healthcheck passes
            stop_timeout=GRACE_SECONDS - PRESTOP_SECONDS,  # SIGTERM drains requests (not the engine's 10 s)
            ports=[
                docker.ContainerPortArgs(internal=PORT, external=args.port),
                *(
                    [docker.ContainerPortArgs(internal=GRPC_PORT, external=args.grpc_port)]
                    if args.grpc_port is not None
                    else []
                ),
            ],
            envs=envs,
            user=f"{UID}:{UID}",
            read_only=True,
            memory=-(-hw.memory_limit_bytes // 2**20),
            cpus=f"{hw.cpu_limit_millis / 1000:g}",
            capabilities=docker.ContainerCapabilitiesArgs(drops=["ALL"]),
            security_opts=["no-new-privileges:true"],
            tmpfs={"/tmp": "rw,size=64m"},  # noqa: S108 - the container's own /tmp, in memory
            volumes=[docker.ContainerVolumeArgs(volume_name=self.volume.name, container_path="/data")],
            # By name on the deployment's network: the address its served versions mirror to.
            networks_advanced=(
                [docker.ContainerNetworksAdvancedArgs(name=args.network, aliases=[cname])]
                if args.network is not None
                else None
            ),
            healthcheck=docker.ContainerHealthcheckArgs(
                tests=["CMD", "/opt/venv/bin/python", "-m", "mlops_iac.serving.health"],
                interval="10s",
                timeout="3s",
                start_period="30s",
                retries=3,
            ),
            labels=[
                docker.ContainerLabelArgs(label="dev.mlops-iac.deployment", value=dep.name),
                docker.ContainerLabelArgs(label="dev.mlops-iac.version", value=str(version.number)),
            ],
        )
        self.register_outputs({"name": cname, "port": args.port, "grpcPort": args.grpc_port, "image": version.image})
