"""`mlops-iac build`: the build context of a model version, and optionally the image."""

from __future__ import annotations

from pathlib import Path

import click

from .console import registry_file_option as file_option
from .images import context_digest, context_files, image_tag
from .images.docker import build as docker_build
from .images.docker import push as docker_push
from .lock import BuildFacts, ImageFacts, Lock, update_lock
from .registry import Version, parse_ref
from .resolve import Workspace
from .workspace import project_registry, root_of
from .workspace.contexts import gather
from .writer import apply


@click.command()
@click.argument("ref")
@click.option(
    "--out",
    type=click.Path(file_okay=False, path_type=Path),
    default=None,
    help="Context folder (default: build/MODEL-N beside mlops.yaml).",
)
@click.option(
    "--platform",
    type=click.Choice(["linux/amd64", "linux/arm64"]),
    default=None,
    help="Default: the platform of the version's deployment target, else linux/amd64.",
)
@click.option("--gpu", is_flag=True, help="The CUDA variant (default: when a deployment asks for a GPU).")
@click.option("--docker", "with_docker", is_flag=True, help="Build the image with the local engine (--network none).")
@click.option(
    "--push",
    "registry_url",
    default=None,
    metavar="REGISTRY/REPO",
    help="Push the image there and record its digest in mlops.lock (implies --docker).",
)
@file_option
def build(
    ref: str, out: Path | None, platform: str | None, gpu: bool, with_docker: bool, registry_url: str | None, file: Path
) -> None:
    """Write the deterministic, hermetic build context of a model version (Dockerfile, ONNX model,
    server, wheels with hashes, settings from the lock), and optionally build and push it."""
    registry, ws = project_registry(file, against_lock=False)
    version = registry.resolve(parse_ref(ref))
    inputs = gather(registry, ws, version, platform, gpu)
    files = context_files(inputs)
    digest = context_digest(files)
    root = root_of(ws)
    folder = out or root / "build" / f"{version.model}-{version.version}"
    apply(files, folder)
    click.echo(
        f"{version.model}@{version.version}: context {digest} ({inputs.platform}, "
        f"{sum(len(f.data) for f in files) / 2**20:.1f} MiB) in {folder}"
    )
    image = None
    if with_docker or registry_url:
        repository = f"{registry_url.rstrip('/')}/{version.model}" if registry_url else f"mlops-iac/{version.model}"
        reference = f"{repository}:{image_tag(digest)}"
        image_id = docker_build(folder, reference)
        click.echo(f"built {reference} ({image_id})")
        if registry_url:
            pushed = docker_push(reference)
            image = ImageFacts(reference=f"{repository}@{pushed}", digest=pushed)
            click.echo(f"pushed {image.reference}")
    _record(ws, version, BuildFacts(context_digest=digest, platform=inputs.platform), image)


def _record(ws: Workspace | None, version: Version, facts: BuildFacts, image: ImageFacts | None) -> None:
    if ws is None or ws.lock.version(version.model, version.version) is None:
        return

    def change(lock: Lock) -> Lock:
        sections = {"build": facts.model_dump()}
        if image is not None:
            sections["image"] = image.model_dump()
        return lock.with_facts(version.model, version.version, **sections)

    update_lock(ws.lock_path, change)


__all__ = ["build"]
