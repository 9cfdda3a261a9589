"""`mlops-iac build`: the build context of a model version, and optionally the image."""

from __future__ import annotations

import tempfile
from pathlib import Path

import click

from .artifacts import FileArtifact
from .build import ContextInputs, context_digest, context_files, image_tag
from .build.docker import build as docker_build
from .build.docker import push as docker_push
from .build.wheels import fetch
from .cli_convert import _model_spec
from .cli_registry import file_option, project_registry
from .errors import MlopsIacError
from .lock import BuildFacts, ImageFacts, Lock, update_lock
from .registry import Registry, Version, parse_ref
from .resolve import Workspace
from .writer import apply

SERVER_PACKAGE = Path(__file__).resolve().parent


def server_sources(batch: bool = False) -> dict[str, bytes]:
    """The server's own code, as it goes into every image (only what `serving` imports), and
    batch scoring's (`python -m mlops_iac.scoring`) when the model has a batch deployment."""
    files = [SERVER_PACKAGE / "__init__.py", SERVER_PACKAGE / "errors.py",
             *sorted((SERVER_PACKAGE / "serving").glob("*.py"))]
    if batch:
        files += [SERVER_PACKAGE / "fsutil.py", *sorted((SERVER_PACKAGE / "scoring").glob("*.py"))]
    return {f"mlops_iac/{p.relative_to(SERVER_PACKAGE).as_posix()}": p.read_bytes() for p in files}


def gather(registry: Registry, ws: Workspace | None, version: Version, platform: str | None,
           gpu: bool) -> ContextInputs:
    """Everything the pure context function needs, read from the registry, lock and spec."""
    onnx = version.artifacts.get("onnx")
    if onnx is None:
        raise MlopsIacError(f"{version.model}@{version.version} has no ONNX artifact; run "
                            f"`mlops-iac convert {version.model}@{version.version}` first")
    facts = ws.lock.version(version.model, version.version) if ws else None
    if facts is not None and facts.onnx is not None and facts.onnx.digest != onnx.digest:
        raise MlopsIacError(f"mlops.lock pins the ONNX of {version.model}@{version.version} to "
                            f"{facts.onnx.digest}, the registry has {onnx.digest}")
    spec = _model_spec(ws, version.model)
    deps = [d for d in ws.resolved.deployments if d.model == version.model] if ws else []
    hardware = next((v.hardware for d in deps for v in d.versions if v.number == version.version), None)
    targets = [ws.resolved.target(d.target).spec for d in deps] if ws else []
    platform = platform or next((t.platform for t in targets if hasattr(t, "platform")), "linux/amd64")
    gpu = gpu or bool(hardware and hardware.gpu)
    batch = any(d.batch is not None for d in deps)
    rec = facts.recommendation if facts else None
    with tempfile.TemporaryDirectory() as tmp:
        model = Path(tmp) / "model.onnx"
        registry.pull(parse_ref(f"{version.model}@{version.version}"), model, "onnx")
        onnx_bytes = model.read_bytes()
    build = spec.build if spec else None
    root = ws.root if ws else Path.cwd()
    python_version = build.python_version if build else "3.11"
    return ContextInputs(
        model=version.model, version=version.version, model_digest=version.digest, onnx=onnx_bytes,
        onnx_digest=onnx.digest, created=version.lineage.created, platform=platform, gpu=gpu,
        base_image=build.base_image if build else None,
        extra_steps=(root / build.extra_steps).read_text() if build and build.extra_steps else None,
        revision=version.lineage.git_commit,
        handler=(root / spec.handler).read_bytes() if spec and spec.handler else None,
        threads=hardware.threads if hardware else (rec.threads if rec else 1),
        max_batch_size=hardware.max_batch_size if hardware else (rec.max_batch_size if rec else 1),
        max_delay_ms=hardware.max_delay_ms if hardware else (rec.max_delay_ms if rec else 0.0),
        wheels=tuple(fetch(platform, python_version, gpu, batch)), sources=server_sources(batch))


@click.command()
@click.argument("ref")
@click.option("--out", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="Context folder (default: build/MODEL-N beside mlops.yaml).")
@click.option("--platform", type=click.Choice(["linux/amd64", "linux/arm64"]), default=None,
              help="Default: the platform of the version's deployment target, else linux/amd64.")
@click.option("--gpu", is_flag=True, help="The CUDA variant (default: when a deployment asks for a GPU).")
@click.option("--docker", "with_docker", is_flag=True, help="Build the image with the local engine (--network none).")
@click.option("--push", "registry_url", default=None, metavar="REGISTRY/REPO",
              help="Push the image there and record its digest in mlops.lock (implies --docker).")
@file_option
def build(ref: str, out: Path | None, platform: str | None, gpu: bool, with_docker: bool,
          registry_url: str | None, file: Path) -> None:
    """Write the deterministic, hermetic build context of a model version (Dockerfile, ONNX model,
    server, wheels with hashes, settings from the lock), and optionally build and push it."""
    registry, ws = project_registry(file, against_lock=False)
    version = registry.resolve(parse_ref(ref))
    inputs = gather(registry, ws, version, platform, gpu)
    files = context_files(inputs)
    digest = context_digest(files)
    root = ws.root if ws else Path.cwd()
    folder = out or root / "build" / f"{version.model}-{version.version}"
    apply(files, folder)
    click.echo(f"{version.model}@{version.version}: context {digest} ({inputs.platform}, "
               f"{sum(len(f.data) for f in files) / 2**20:.1f} MiB) in {folder}")
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


__all__ = ["FileArtifact", "build", "gather", "server_sources"]
