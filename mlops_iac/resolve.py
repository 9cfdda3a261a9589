"""From what the user wrote (`Spec`) to what the tool acts on (`Resolved`). Pure.

Defaults are filled, names linked, versions pinned to numbers and digests from the lock,
`auto` hardware taken from the profile's recommendation, monitoring merged (deployment,
then global, then defaults). Only resolved objects move downstream.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, SerializerFunctionWrapHandler, TypeAdapter, model_serializer

from .checks import check, check_partial, deployment_name
from .checks.delivery import deployed_refs
from .errors import ConfigError, Problem, only_errors
from .loader import Document, PathKey, load_file, validate_document
from .lock import Lock, Recommendation, read_lock
from .spec import Deployment, Model, Spec
from .spec.batch import Batch
from .spec.models import Convert, Profile, Signature, Validate
from .spec.monitoring import FileSink, HttpSink, Sink, StdoutSink
from .spec.registry import Registry
from .spec.targets import AzureTarget, DockerTarget, KubernetesTarget, LocalTarget

DEFAULT_PYTHON = "3.11"
# Used where hardware is `auto` and no profile has measured the model yet.
DEFAULT_CPU_MILLIS = 1000
DEFAULT_MEMORY = 512 * 2**20
DEFAULT_MONITORING: dict[str, Any] = {
    "metrics": {"enabled": True},
    "dataCollection": {"enabled": False, "sampleRate": 0.0, "sink": {"kind": "stdout"}},
    "drift": {"threshold": 0.2},
    "alerts": {"errorRate": 0.01},
}
Source = Literal["explicit", "profile", "default"]
_SINK: TypeAdapter[FileSink | StdoutSink | HttpSink] = TypeAdapter(Sink)


class Resolved(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class ResolvedBuild(Resolved):
    base_image: str | None
    extra_steps: str | None
    python_version: str


class ResolvedModel(Resolved):
    name: str
    framework: str
    source: str
    train: str | None
    signature: Signature | None
    sample: str | None
    handler: str | None
    convert: Convert
    validate_: Validate | None
    profile: Profile
    build: ResolvedBuild


class ResolvedHardware(Resolved):
    cpu_millis: int
    cpu_limit_millis: int
    memory_bytes: int
    memory_limit_bytes: int
    gpu: int
    replicas_min: int
    replicas_max: int
    threads: int
    max_batch_size: int
    max_delay_ms: float
    sources: dict[str, Source]


class ResolvedVersion(Resolved):
    ref: int | str
    number: int | None
    digest: str | None
    weight: int
    hardware: ResolvedHardware
    onnx_digest: str | None = None
    image: str | None = None  # the pushed image, by digest


class ResolvedMonitoring(Resolved):
    metrics: bool
    collect: bool
    sample_rate: float
    sink: FileSink | StdoutSink | HttpSink
    drift_baseline: str | None
    drift_threshold: float
    alert_p99_ms: float
    alert_error_rate: float


class ResolvedDeployment(Resolved):
    name: str
    model: str
    target: str
    versions: tuple[ResolvedVersion, ...]
    auth: Literal["none", "key"]
    monitoring: ResolvedMonitoring
    shadow: dict[int, int] = {}  # version number -> percent of requests mirrored to it (it serves none)
    # kind: batch (no default to fill: the settings as written); left out of an online
    # deployment's plan.json, so plans of online deployments stay as they were.
    batch: Batch | None = Field(None, exclude_if=lambda value: value is None)

    @model_serializer(mode="wrap")
    def _without_empty_shadow(self, handler: SerializerFunctionWrapHandler) -> dict[str, Any]:
        # Written only when set: a plan.json without shadow traffic stays byte-identical.
        data: dict[str, Any] = handler(self)
        if not self.shadow:
            data.pop("shadow", None)
        return data

    @property
    def served(self) -> tuple[ResolvedVersion, ...]:
        """The versions that answer requests (not the shadows)."""
        return tuple(v for v in self.versions if v.number not in self.shadow)


class ResolvedTarget(Resolved):
    name: str
    spec: LocalTarget | DockerTarget | KubernetesTarget | AzureTarget


class ResolvedSpec(Resolved):
    project: str
    description: str
    mlops_iac: str  # the requirement the Pulumi program installs mlops-iac by
    registry: Registry  # a discriminated union: a local folder or an OCI repository
    models: tuple[ResolvedModel, ...]
    targets: tuple[ResolvedTarget, ...]
    deployments: tuple[ResolvedDeployment, ...]

    def model(self, name: str) -> ResolvedModel:
        return next(m for m in self.models if m.name == name)

    def target(self, name: str) -> ResolvedTarget:
        return next(t for t in self.targets if t.name == name)


@dataclass(frozen=True)
class Workspace:
    """One project as loaded from disk: the file, its folder, the lock and the resolved spec."""

    file: Path
    root: Path
    doc: Document
    spec: Spec
    lock: Lock
    resolved: ResolvedSpec
    warnings: tuple[Problem, ...]

    @property
    def lock_path(self) -> Path:
        return self.root / "mlops.lock"


def load(file: Path, *, against_lock: bool = True, check_paths: bool = True) -> Workspace:
    """Load, validate, check and resolve `file` and the mlops.lock beside it.

    `against_lock=False` skips checking versions and aliases against the lock: the one
    command that brings the lock up to date (`lock sync`) must run while it is behind.
    """
    doc = load_file(file)
    root = file.resolve().parent
    try:
        spec = validate_document(Spec, doc)
    except ConfigError as exc:  # add what the sections that did parse say about each other
        raise ConfigError({*exc.problems, *check_partial(doc, root if check_paths else None)}) from None
    lock_path = root / "mlops.lock"
    lock = read_lock(lock_path, str(file.parent / "mlops.lock"))
    resolved, warnings = resolve(spec, doc, lock, root if check_paths else None, check_lock=against_lock)
    return Workspace(file, root, doc, spec, lock, resolved, tuple(warnings))


def resolve(
    spec: Spec, doc: Document, lock: Lock, root: Path | None, *, check_lock: bool = True
) -> tuple[ResolvedSpec, list[Problem]]:
    """Resolve `spec` with `lock`; raise `ConfigError` with every error found. Versions are
    checked against the lock only with `check_lock`, paths on disk only with a `root`."""
    problems = check(spec, doc, lock if check_lock else None, root)
    if only_errors(problems):
        raise ConfigError(problems)
    warnings = [p for p in problems if p.severity == "warning"]
    models = tuple(_model(m, spec) for m in spec.models)
    deployments = []
    for i, dep in enumerate(spec.deployments):
        model = next(m for m in models if m.name == dep.model)
        resolved, found = _deployment(spec, doc, lock, i, dep, model)
        deployments.append(resolved)
        warnings.extend(found)
    return ResolvedSpec(
        project=spec.project.name,
        description=spec.project.description,
        mlops_iac=spec.project.mlops_iac,
        registry=spec.registry,
        models=models,
        targets=tuple(ResolvedTarget(name=n, spec=t) for n, t in sorted(spec.targets.items())),
        deployments=tuple(deployments),
    ), warnings


def _model(model: Model, spec: Spec) -> ResolvedModel:
    own = model.build
    build = ResolvedBuild(
        base_image=(own.base_image if own and own.base_image else spec.build.base_image),
        extra_steps=(own.extra_steps if own and own.extra_steps else spec.build.extra_steps),
        python_version=(
            own.python_version if own and own.python_version else spec.build.python_version or DEFAULT_PYTHON
        ),
    )
    return ResolvedModel(
        name=model.name,
        framework=model.framework,
        source=model.source,
        train=model.train,
        signature=model.signature,
        sample=model.sample,
        handler=model.handler,
        convert=model.convert,
        validate_=model.validate_,
        profile=model.profile,
        build=build,
    )


def _deployment(
    spec: Spec, doc: Document, lock: Lock, i: int, dep: Deployment, model: ResolvedModel
) -> tuple[ResolvedDeployment, list[Problem]]:
    refs = deployed_refs(dep)
    weights = _weights(dep, refs, lock)
    versions = []
    warnings: list[Problem] = []
    shadows = tuple(r for r in (dep.shadow or {}) if r not in refs)
    for ref in (*refs, *shadows):  # a shadow version runs beside the others, with no traffic
        number = lock.resolve(dep.model, ref)
        facts = lock.version(dep.model, number) if number is not None else None
        recommended = facts.recommendation if facts else None
        hardware = _hardware(dep, recommended)
        warnings.extend(_below_profile(doc, ("deployments", i, "hardware"), hardware, recommended))
        versions.append(
            ResolvedVersion(
                ref=ref,
                number=number,
                digest=facts.digest if facts else None,
                weight=weights.get(ref, 0),
                hardware=hardware,
                onnx_digest=facts.onnx.digest if facts and facts.onnx else None,
                image=facts.image.reference if facts and facts.image else None,
            )
        )
    monitoring = _monitoring(spec, dep, model)
    return ResolvedDeployment(
        name=deployment_name(dep),
        model=dep.model,
        target=dep.target,
        versions=tuple(versions),
        auth=dep.auth,
        monitoring=monitoring,
        batch=dep.batch,
        shadow={v.number: (dep.shadow or {})[v.ref] for v in versions[len(refs) :] if v.number is not None},
    ), warnings


def _weights(dep: Deployment, refs: tuple[int | str, ...], lock: Lock) -> dict[int | str, int]:
    """Percent per version: a rollout's current step in mlops.lock (a fact) wins over `traffic`;
    a rollout not yet started gives the canary its first step."""
    if dep.rollout is None or len(refs) != 2:
        return dict(dep.traffic) if dep.traffic is not None else {refs[0]: 100}
    facts = lock.rollouts.get(deployment_name(dep))
    if facts is not None and [facts.stable, facts.canary] == [lock.resolve(dep.model, r) for r in refs]:
        return {refs[0]: 100 - facts.weight, refs[1]: facts.weight}
    if dep.traffic is not None:
        return dict(dep.traffic)
    first = dep.rollout.weights()[0]
    return {refs[0]: 100 - first, refs[1]: first}


def _pick(value: Any, recommended: Any, default: Any) -> tuple[Any, Source]:
    if value != "auto":
        return value, "explicit"
    if recommended is not None:
        return recommended, "profile"
    return default, "default"


def _hardware(dep: Deployment, rec: Recommendation | None) -> ResolvedHardware:
    hw = dep.hardware
    cpu, cpu_from = _pick(hw.cpu, rec.cpu_millis / 1000 if rec else None, DEFAULT_CPU_MILLIS / 1000)
    memory, memory_from = _pick(hw.memory, rec.memory_bytes if rec else None, DEFAULT_MEMORY)
    low, low_from = _pick(hw.replicas.min, rec.replicas_min if rec else None, 1)
    high, high_from = _pick(hw.replicas.max, rec.replicas_max if rec else None, max(1, int(low)))
    cpu_millis, memory_bytes = round(float(cpu) * 1000), int(memory)
    profiled = rec is not None and cpu_from == "profile"
    return ResolvedHardware(
        cpu_millis=cpu_millis,
        memory_bytes=memory_bytes,
        gpu=hw.gpu,
        # Limits: the profile's when it sized the request; else twice the CPU (bursts are not
        # throttled on every spike) and exactly the memory (no overcommit, no surprise OOM).
        cpu_limit_millis=(rec.cpu_limit_millis or 2 * cpu_millis) if profiled and rec else 2 * cpu_millis,
        memory_limit_bytes=(rec.memory_limit_bytes or memory_bytes)
        if rec and memory_from == "profile"
        else memory_bytes,
        replicas_min=int(low),
        replicas_max=max(int(high), int(low)),
        threads=rec.threads if rec else 1,
        max_batch_size=rec.max_batch_size if rec else 1,
        max_delay_ms=rec.max_delay_ms if rec else 0.0,
        sources={"cpu": cpu_from, "memory": memory_from, "replicasMin": low_from, "replicasMax": high_from},
    )


def _below_profile(doc: Document, here: PathKey, hw: ResolvedHardware, rec: Recommendation | None) -> list[Problem]:
    if rec is None:
        return []
    out = []
    if hw.sources["cpu"] == "explicit" and hw.cpu_millis < rec.cpu_millis:
        out.append(
            doc.problem(
                (*here, "cpu"),
                f"{hw.cpu_millis}m is below the profile's {rec.cpu_millis}m",
                "the p99 objective may be missed",
                severity="warning",
            )
        )
    if hw.sources["memory"] == "explicit" and hw.memory_bytes < rec.memory_bytes:
        out.append(
            doc.problem(
                (*here, "memory"),
                f"{hw.memory_bytes} bytes is below the profile's {rec.memory_bytes}",
                "the container may be OOM-killed",
                severity="warning",
            )
        )
    return out


def _deep_merge(base: dict[str, Any], over: dict[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for key, value in over.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict) and "kind" not in value:
            out[key] = _deep_merge(out[key], value)
        else:
            out[key] = value
    return out


def _monitoring(spec: Spec, dep: Deployment, model: ResolvedModel) -> ResolvedMonitoring:
    merged = DEFAULT_MONITORING
    for layer in (spec.monitoring, dep.monitoring):
        if layer is not None:
            merged = _deep_merge(merged, layer.model_dump(by_alias=True, exclude_none=True, exclude_unset=True))
    collection = merged["dataCollection"]
    return ResolvedMonitoring(
        metrics=merged["metrics"]["enabled"],
        collect=collection["enabled"],
        sample_rate=collection["sampleRate"],
        sink=_SINK.validate_python(collection["sink"]),
        drift_baseline=merged["drift"].get("baseline", model.sample),
        drift_threshold=merged["drift"]["threshold"],
        alert_p99_ms=merged["alerts"].get("p99LatencyMs", model.profile.p99_latency_ms),
        alert_error_rate=merged["alerts"]["errorRate"],
    )
