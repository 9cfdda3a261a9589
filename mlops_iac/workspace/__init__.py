"""The workspace layer: a project opened (spec, lock, registry) and the operations the commands
share on it: resolve a ref, fetch a version's ONNX model, pin a version in the lock, find the
users of a version, take the sample.

The commands (`cli*.py`) parse their flags, call these and print; none of them imports another
command's helpers. Nothing here prints except through a callback the caller gives.
"""

from __future__ import annotations

import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import click

from ..errors import MlopsIacError, RegistryError
from ..lock import BaselineFacts, Lock, LockedVersion, OnnxFacts, ValidationFacts, update_lock
from ..registry import Registry, Version, open_registry, parse_ref
from ..registry.records import Artifact
from ..resolve import ResolvedModel, Workspace, load
from ..spec.registry import LocalRegistry

CACHE = ".mlops/serve"  # verified ONNX files by digest, beside mlops.yaml (what `serve` and `score` run)


def project_registry(file: Path, *, against_lock: bool = True) -> tuple[Registry, Workspace | None]:
    """The registry that mlops.yaml names, or the default local folder when there is none."""
    if file.exists():
        ws = load(file, against_lock=against_lock)
        return open_registry(ws.resolved.registry, ws.root), ws
    return open_registry(LocalRegistry(backend="local"), Path.cwd()), None


class NoProjectError(MlopsIacError):
    """A command that writes into a project's registry and lock ran outside any project."""


def require_project(file: Path, command: str, option: str) -> None:
    """Refuse to run `command` without mlops.yaml: it would make a registry in whatever folder
    the user stands in. Points at a project in a parent folder, or at `init`."""
    if file.exists():
        return
    here = (Path.cwd() / file).parent.resolve()
    above = next((d / file.name for d in here.parents if (d / file.name).is_file()), None)
    hint = (
        f"found {above}: run it from {above.parent}, or pass {option} {above}"
        if above is not None
        else f"run `mlops-iac init` to start a project here, or pass {option} PATH/mlops.yaml"
    )
    raise NoProjectError(f"{file}: not found in {here}; `{command}` stores versions in a project's registry; {hint}")


def root_of(ws: Workspace | None) -> Path:
    """The folder relative paths start from: mlops.yaml's, or the current one without it."""
    return ws.root if ws else Path.cwd()


def model_spec(ws: Workspace | None, name: str) -> ResolvedModel | None:
    """The model as mlops.yaml declares it, when it does."""
    if ws is None:
        return None
    return next((m for m in ws.resolved.models if m.name == name), None)


def onnx_artifact(version: Version) -> Artifact:
    """The version's ONNX model; the one message for a version that was never converted."""
    onnx = version.artifacts.get("onnx")
    if onnx is None:
        raise MlopsIacError(
            f"{version.model}@{version.version} has no ONNX artifact; run "
            f"`mlops-iac convert {version.model}@{version.version}` first"
        )
    return onnx


@contextmanager
def onnx_file(registry: Registry, version: Version) -> Iterator[Path]:
    """The version's ONNX model, verified against its digest, in a temporary folder that goes
    away after the block (its siblings there are the caller's scratch space)."""
    onnx_artifact(version)
    with tempfile.TemporaryDirectory() as tmp:
        model = Path(tmp) / "model.onnx"
        registry.pull(parse_ref(f"{version.model}@{version.version}"), model, "onnx")
        yield model


def cached_onnx(registry: Registry, root: Path, model: str, number: int, digest: str) -> str:
    """The pinned ONNX file in the local cache (fetched and verified once), relative to root."""
    relative = f"{CACHE}/{digest.removeprefix('sha256:')}.onnx"
    target = root / relative
    if not target.exists():
        target.parent.mkdir(parents=True, exist_ok=True)
        version = registry.pull(parse_ref(f"{model}@{number}"), target, "onnx")
        if version.artifacts["onnx"].digest != digest:
            target.unlink()
            raise MlopsIacError(
                f"the registry's ONNX of {model}@{number} is not the one mlops.lock "
                "pins; run `mlops-iac convert` again or fix the lock"
            )
    return relative


def lock_version(version: Version) -> LockedVersion:
    return LockedVersion(digest=version.digest, framework=version.framework, size=version.size)


def onnx_facts(artifact: Artifact) -> OnnxFacts:
    """The lock's `onnx` section from the registry's ONNX artifact (what `convert` linked)."""
    facts = artifact.facts
    return OnnxFacts(
        digest=artifact.digest,
        size=artifact.size,
        opset=facts["opset"],
        optimization=facts["optimization"],
        inputs=facts["signature"]["inputs"],
        outputs=facts["signature"]["outputs"],
        parity=facts["parity"],
        quantization=facts["quantization"],
        speedup=facts["speedup"],
        breaking=tuple(facts["breaking"]),
    )


def stored_facts(registry: Registry, version: Version, known: LockedVersion | None = None) -> LockedVersion:
    """A pin of `version`: what the lock knows, with what the registry stored and the lock lacks.

    A version converted before it was pinned has its ONNX, baseline and validation in the
    registry only; without them the lock would ask for a conversion that was already done.
    """
    pinned = known or lock_version(version)
    sections: dict[str, Any] = {}
    onnx = version.artifacts.get("onnx")
    if pinned.onnx is None and onnx is not None:
        sections["onnx"] = onnx_facts(onnx)
    base = version.artifacts.get("baseline")
    if pinned.baseline is None and base is not None:
        sections["baseline"] = BaselineFacts(digest=base.digest, rows=base.facts["rows"], columns=base.facts["columns"])
    if pinned.validation is None and version.status != "registered":
        sections["validation"] = _validation_of(registry, version)
    return pinned.model_copy(update={k: v for k, v in sections.items() if v is not None})


def _validation_of(registry: Registry, version: Version) -> ValidationFacts | None:
    """The validation that last set the version's status (the registry keeps it in the history)."""
    events = [e for e in registry.index(version.model).history if e.version == version.version]
    detail = next((e.detail for e in reversed(events) if e.action == "status" and "metric" in e.detail), None)
    if detail is None:
        return None
    return ValidationFacts(
        metric=detail["metric"], value=detail["value"], threshold=detail["threshold"], passed=detail["passed"]
    )


def pin_in_lock(ws: Workspace, version: Version, registry: Registry | None = None) -> None:
    """Record a version in mlops.lock, keeping whatever later stages found out about it (and,
    given the registry, taking what it stored of a version converted before it was pinned)."""

    def change(lock: Lock) -> Lock:
        known = lock.version(version.model, version.version)
        if known is not None and known.digest != version.digest:
            raise RegistryError(
                f"mlops.lock pins {version.model}@{version.version} to "
                f"{known.digest}, but the registry has {version.digest}"
            )
        if registry is not None:
            return lock.with_version(version.model, version.version, stored_facts(registry, version, known))
        return lock if known is not None else lock.with_version(version.model, version.version, lock_version(version))

    update_lock(ws.lock_path, change)


def users_of(ws: Workspace | None, version: Version, *, lock: bool = True) -> list[str]:
    """The deployments in mlops.yaml (and, with `lock`, the pins in mlops.lock) that use `version`."""
    if ws is None:
        return []
    users = []
    for dep in ws.resolved.deployments:
        if dep.model == version.model and any(
            v.number == version.version or v.ref in (version.version, version.digest) for v in dep.versions
        ):
            users.append(f"deployment {dep.name} in {ws.file.name}")
    pinned = ws.lock.version(version.model, version.version) if lock else None
    if pinned is not None and pinned.digest == version.digest:
        users.append(f"the pin of {version.model}@{version.version} in mlops.lock")
    return users


def sample_path(given: Path | None, spec: ResolvedModel | None, ws: Workspace | None) -> Path:
    if given is not None:
        return given
    if spec is None or spec.sample is None or ws is None:
        # A missing flag is a usage error (exit 2, with the usage line), as click reports its own.
        raise click.UsageError("no sample data: pass --sample PATH or set the model's `sample` in mlops.yaml")
    return ws.root / spec.sample


def features(
    given: Path | None,
    spec: ResolvedModel | None,
    ws: Workspace | None,
    framework: str,
    artifact: Path,
    echo: Callable[[str], None],
) -> Any:
    """The sample's rows; for an ONNX model without a sample, rows made from its signature."""
    if given is None and framework == "onnx" and (spec is None or spec.sample is None or ws is None):
        from ..convert.synthetic import rows_from_signature

        rows, how = rows_from_signature(artifact.read_bytes())
        echo(
            f"no sample: {how}; parity and the drift baseline use them. Set the model's "
            "`sample` in mlops.yaml for checks on real data"
        )
        return rows
    from ..convert.data import read_sample

    return read_sample(sample_path(given, spec, ws))
