"""What a version's build context is made from, gathered from the registry, the lock and the
spec: the inputs of the pure `build.context_files`."""

from __future__ import annotations

from pathlib import Path

from ..errors import MlopsIacError
from ..images import ContextInputs
from ..images.wheels import fetch
from ..registry import Registry, Version
from ..resolve import Workspace
from . import model_spec, onnx_artifact, onnx_file, root_of

SERVER_PACKAGE = Path(__file__).resolve().parent.parent  # mlops_iac/


def server_sources(batch: bool = False) -> dict[str, bytes]:
    """The server's own code, as it goes into every image (only what `serving` imports), and
    batch scoring's (`python -m mlops_iac.scoring`) when the model has a batch deployment."""
    files = [
        SERVER_PACKAGE / "__init__.py",
        SERVER_PACKAGE / "errors.py",
        SERVER_PACKAGE / "contract.py",  # the ports, user and environment names the server reads
        *sorted((SERVER_PACKAGE / "serving").glob("*.py")),
    ]
    if batch:
        files += [SERVER_PACKAGE / "fsutil.py", *sorted((SERVER_PACKAGE / "scoring").glob("*.py"))]
    return {f"mlops_iac/{p.relative_to(SERVER_PACKAGE).as_posix()}": p.read_bytes() for p in files}


def gather(
    registry: Registry, ws: Workspace | None, version: Version, platform: str | None, gpu: bool
) -> ContextInputs:
    """Everything the pure context function needs, read from the registry, lock and spec."""
    onnx = onnx_artifact(version)
    facts = ws.lock.version(version.model, version.version) if ws else None
    if facts is not None and facts.onnx is not None and facts.onnx.digest != onnx.digest:
        raise MlopsIacError(
            f"mlops.lock pins the ONNX of {version.model}@{version.version} to "
            f"{facts.onnx.digest}, the registry has {onnx.digest}"
        )
    spec = model_spec(ws, version.model)
    deps = [d for d in ws.resolved.deployments if d.model == version.model] if ws else []
    hardware = next((v.hardware for d in deps for v in d.versions if v.number == version.version), None)
    targets = [ws.resolved.target(d.target).spec for d in deps] if ws else []
    platform = platform or next((t.platform for t in targets if hasattr(t, "platform")), "linux/amd64")
    gpu = gpu or bool(hardware and hardware.gpu)
    batch = any(d.batch is not None for d in deps)
    rec = facts.recommendation if facts else None
    with onnx_file(registry, version) as model:
        onnx_bytes = model.read_bytes()
    build = spec.build if spec else None
    root = root_of(ws)
    python_version = build.python_version if build else "3.11"
    return ContextInputs(
        model=version.model,
        version=version.version,
        model_digest=version.digest,
        onnx=onnx_bytes,
        onnx_digest=onnx.digest,
        created=version.lineage.created,
        platform=platform,
        gpu=gpu,
        base_image=build.base_image if build else None,
        extra_steps=(root / build.extra_steps).read_text() if build and build.extra_steps else None,
        revision=version.lineage.git_commit,
        handler=(root / spec.handler).read_bytes() if spec and spec.handler else None,
        threads=hardware.threads if hardware else (rec.threads if rec else 1),
        max_batch_size=hardware.max_batch_size if hardware else (rec.max_batch_size if rec else 1),
        max_delay_ms=hardware.max_delay_ms if hardware else (rec.max_delay_ms if rec else 0.0),
        wheels=tuple(fetch(platform, python_version, gpu, batch)),
        sources=server_sources(batch),
    )
