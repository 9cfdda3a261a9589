"""Cross-section checks of mlops.yaml: pure, and every problem reported at once.

Pydantic checks each section by itself; here we check what sections say about each other
(a deployment's model and target exist, traffic sums to 100, ...) and what the file says
about the disk (paths exist). Each check returns problems; none raises.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..errors import Problem, did_you_mean
from ..loader import Document, PathKey
from ..lock import Lock
from ..spec import Build, Deployment, Model, Monitoring, Spec
from ..spec.targets import AzureTarget, DockerTarget, KubernetesTarget, LocalTarget, Target
from .azure import azure_problems
from .delivery import (
    deployed_refs,
    rollout_problems,
    route_problems,
    selection_problems,
    shadow_problems,
    traffic_problems,
)
from .paths import near_miss

DATA_SUFFIXES = (".npy", ".npz", ".csv", ".parquet")


def deployment_name(dep: Deployment) -> str:
    return dep.name or f"{dep.model}-{dep.target}"


@dataclass(frozen=True)
class _Parts:
    """The sections to check, each item with its index in the file. From a valid Spec all of
    them; from a file that failed validation, the items that parsed by themselves."""

    models: list[tuple[int, Model]]
    model_names: list[str] | None  # None: a model has no readable name, so any name may exist
    targets: dict[str, Any]  # name -> target, or None for a named target that did not parse
    deployments: list[tuple[int, Deployment]]
    build: Build | None
    monitoring: Monitoring | None
    # Per deployment index, the keys it parsed only without (their values are invalid, and
    # reported as such): they were written, so no check may call them missing.
    dropped: Mapping[int, frozenset[str]] = field(default_factory=dict)


def check(spec: Spec, doc: Document, lock: Lock | None, root: Path | None) -> list[Problem]:
    """Every cross-section problem; versions are checked against `lock` unless it is None, and
    paths against the disk unless `root` is None (a file read from another commit)."""
    parts = _Parts(
        models=list(enumerate(spec.models)),
        model_names=[m.name for m in spec.models],
        targets=dict(spec.targets),
        deployments=list(enumerate(spec.deployments)),
        build=spec.build,
        monitoring=spec.monitoring,
    )
    return _check(parts, doc, lock, root)


def check_partial(doc: Document, root: Path | None) -> list[Problem]:
    """The cross-section problems of the parts that parsed, while another part of the file did
    not: the user sees every problem at once, not the next ones after a fix.

    Models and targets count by the names the file gives them, valid or not, so that a typo
    inside a model is not also reported as an unknown model.
    """
    data = doc.data if isinstance(doc.data, dict) else {}
    raw_models = _section(data, "models", list)
    names = [m["name"] for m in raw_models if isinstance(m, dict) and isinstance(m.get("name"), str)]
    targets = {str(name): _parsed(Target, raw) for name, raw in _section(data, "targets", dict).items()}
    parts = _Parts(
        models=_items(Model, raw_models),
        model_names=names if len(names) == len(raw_models) else None,
        targets=targets,
        deployments=_items(Deployment, _section(data, "deployments", list)),
        dropped=_dropped(_section(data, "deployments", list)),
        build=_parsed(Build, data.get("build", {})),
        monitoring=_parsed(Monitoring, data.get("monitoring", {})),
    )
    return _check(parts, doc, None, root)


def _check(parts: _Parts, doc: Document, lock: Lock | None, root: Path | None) -> list[Problem]:
    problems = [*_duplicate_names(parts, doc), *(_paths(parts, doc, root) if root is not None else [])]
    for i, dep in parts.deployments:
        problems.extend(
            _deployment(parts.model_names, parts.targets, doc, lock, i, dep, dropped=parts.dropped.get(i, frozenset()))
        )
        if isinstance(parts.targets.get(dep.target), KubernetesTarget) and dep.kind != "batch":
            problems.extend(_collection_on_kubernetes(parts.monitoring, doc, ("deployments", i), dep))
        problems.extend(azure_problems(parts.targets.get(dep.target), doc, ("deployments", i), dep))
    return problems


def _parsed(kind: Any, raw: Any) -> Any:
    """`raw` validated as `kind`, or None when it is not valid (its problems are reported apart)."""
    return _parsed_without(kind, raw)[0]


def _parsed_without(kind: Any, raw: Any) -> tuple[Any, frozenset[str]]:
    """`raw` validated as `kind`, and the keys left out to get there.

    A mapping whose failures lie inside some of its keys is tried again without those keys:
    a deployment with a bad `hardware` still has its traffic and target checked.
    """
    from pydantic import TypeAdapter, ValidationError

    adapter: TypeAdapter[Any] = TypeAdapter(kind)
    try:
        return adapter.validate_python(raw), frozenset()
    except ValidationError as exc:
        failed = frozenset(str(err["loc"][0]) for err in exc.errors() if err["loc"])
    if not isinstance(raw, dict) or not failed or not failed <= set(raw):
        return None, failed
    try:
        return adapter.validate_python({k: v for k, v in raw.items() if k not in failed}), failed
    except ValidationError:
        return None, failed


def _items(kind: Any, raw: list[Any]) -> list[tuple[int, Any]]:
    parsed = [(i, _parsed(kind, item)) for i, item in enumerate(raw)]
    return [(i, item) for i, item in parsed if item is not None]


def _dropped(raw: list[Any]) -> dict[int, frozenset[str]]:
    """Per deployment, the keys it parsed only without. A bad `rollout` still sets the weights,
    so a missing `traffic` is no problem of its own; a bad `version` still names the version."""
    return {i: _parsed_without(Deployment, item)[1] for i, item in enumerate(raw)}


def _section(data: dict[Any, Any], key: str, kind: type) -> Any:
    value = data.get(key)
    return value if isinstance(value, kind) else kind()


def _duplicate_names(parts: _Parts, doc: Document) -> Iterator[Problem]:
    seen: dict[str, int] = {}
    for i, model in parts.models:
        if model.name in seen:
            yield doc.problem(
                ("models", i, "name"),
                f"duplicate model name {model.name!r}",
                f"each model is named once; models[{seen[model.name]}] has it",
            )
        seen.setdefault(model.name, i)
    names: dict[str, int] = {}
    for i, dep in parts.deployments:
        name = deployment_name(dep)
        if name in names:
            where = ("deployments", i, "name") if dep.name else ("deployments", i)
            yield doc.problem(
                where,
                f"duplicate deployment name {name!r}",
                f"give each deployment its own name; deployments[{names[name]}] "
                "has it (the default name is <model>-<target>)",
            )
        names.setdefault(name, i)
    placed: dict[tuple[str, str], int] = {}
    by_index = dict(parts.deployments)
    for i, dep in parts.deployments:
        if dep.kind == "batch":  # a Job named by its deployment: it shares nothing with the servers
            continue
        # Version objects and containers are named by model and version, and the stable Service
        # selects the model's pods: two deployments of one model on one target would share them.
        first = placed.setdefault((dep.model, dep.target), i)
        if first != i:
            yield doc.problem(
                ("deployments", i, "target"),
                f"model {dep.model!r} is deployed to target {dep.target!r} twice",
                f"deployments[{first}] ({deployment_name(by_index[first])}) deploys it "
                "there already: list every version in that one deployment (versions, traffic), "
                "or use another target",
            )


def _paths(parts: _Parts, doc: Document, root: Path) -> Iterator[Problem]:
    for i, model in parts.models:
        here: PathKey = ("models", i)
        if not (root / model.source).exists():
            meant = near_miss(root, model.source, model.train) if model.train else None
            if meant is not None:
                yield doc.problem(
                    (*here, "source"),
                    f"{model.source} does not exist (did you mean {meant!r}?)",
                    f"the `train` command ({model.train}) never names it; a path to the trained "
                    f"artifact, relative to the folder of {doc.file}",
                )
            elif model.train:
                yield doc.problem(
                    (*here, "source"),
                    f"{model.source} does not exist yet",
                    "it will be written by the model's `train` command",
                    severity="warning",
                )
            else:
                yield doc.problem(
                    (*here, "source"),
                    f"{model.source} does not exist",
                    f"a path to the trained artifact, relative to the folder of {doc.file}",
                )
        yield from _data_file(doc, root, (*here, "sample"), model.sample, model.train)
        if model.validate_ is not None:
            yield from _data_file(doc, root, (*here, "validate", "dataset"), model.validate_.dataset, model.train)
        for key, value in (
            ("handler", model.handler),
            ("build.extraSteps", model.build.extra_steps if model.build else None),
        ):
            yield from _existing(doc, root, (*here, *key.split(".")), value)
    if parts.build is not None:
        yield from _existing(doc, root, ("build", "extraSteps"), parts.build.extra_steps)
    if parts.monitoring is not None:
        yield from _existing(doc, root, ("monitoring", "drift", "baseline"), parts.monitoring.drift.baseline)
    for i, dep in parts.deployments:
        if dep.monitoring is not None:
            yield from _existing(
                doc, root, ("deployments", i, "monitoring", "drift", "baseline"), dep.monitoring.drift.baseline
            )


def _existing(doc: Document, root: Path, path: PathKey, value: str | None) -> Iterator[Problem]:
    if value is not None and not (root / value).exists():
        yield doc.problem(path, f"{value} does not exist", f"a path relative to the folder of {doc.file}")


def _data_file(doc: Document, root: Path, path: PathKey, value: str | None, train: str | None) -> Iterator[Problem]:
    if value is None:
        return
    if not value.endswith(DATA_SUFFIXES):
        yield doc.problem(path, f"got {value!r}", "expected a data file ending in " + ", ".join(DATA_SUFFIXES))
    elif not (root / value).exists():
        meant = near_miss(root, value, train) if train else None
        if meant is not None:
            yield doc.problem(
                path,
                f"{value} does not exist (did you mean {meant!r}?)",
                f"the `train` command ({train}) never names it",
            )
        elif train:
            yield doc.problem(
                path,
                f"{value} does not exist yet",
                "it will be written by the model's `train` command",
                severity="warning",
            )
        else:
            yield doc.problem(path, f"{value} does not exist", f"a path relative to the folder of {doc.file}")


def _deployment(
    models: list[str] | None,
    targets: Mapping[str, Any],
    doc: Document,
    lock: Lock | None,
    i: int,
    dep: Deployment,
    *,
    dropped: frozenset[str] = frozenset(),
) -> Iterator[Problem]:
    here: PathKey = ("deployments", i)
    if models is not None and dep.model not in models:
        yield doc.problem(
            (*here, "model"),
            f"unknown model {dep.model!r}{did_you_mean(dep.model, models)}",
            "expected one of the models: " + ", ".join(models),
        )
    target = targets.get(dep.target)
    if dep.target not in targets:
        yield doc.problem(
            (*here, "target"),
            f"unknown target {dep.target!r}{did_you_mean(dep.target, targets)}",
            "expected one of the targets: " + ", ".join(targets),
        )
    yield from selection_problems(doc, here, dep, written=dropped)
    yield from traffic_problems(doc, here, dep, rollout="rollout" in dropped or dep.rollout is not None)
    yield from rollout_problems(doc, here, dep)
    yield from route_problems(doc, here, dep, target)
    known = models is not None and dep.model in models
    if dep.shadow:
        yield from shadow_problems(doc, here, dep, target, lock if known else None)
    if known and lock is not None:
        yield from _known_versions(doc, lock, here, dep)
    yield from _hardware(doc, here, dep, target)
    yield from _batch(doc, here, dep)


def _batch(doc: Document, here: PathKey, dep: Deployment) -> Iterator[Problem]:
    if dep.kind == "batch" and dep.batch is None:
        yield doc.problem(
            (*here, "kind"), "a batch deployment without batch settings", "add batch: {input: [...], output: ...}"
        )
    if dep.kind == "online" and dep.batch is not None:
        yield doc.problem(
            (*here, "batch"), "batch settings on an online deployment", "add kind: batch, or remove batch", of_key=True
        )
    if dep.kind == "batch" and (dep.versions is not None or dep.traffic is not None):
        key = "versions" if dep.versions is not None else "traffic"
        yield doc.problem(
            (*here, key),
            "a batch deployment scores with one version",
            "expected version or alias, without traffic",
            of_key=True,
        )


def _collection_on_kubernetes(
    monitoring: Monitoring | None, doc: Document, here: PathKey, dep: Deployment
) -> Iterator[Problem]:
    """A file sink in a pod writes to its emptyDir: the data goes when the pod goes (a
    rollout, an eviction, a scale-down), before any scheduled drift check can read it."""
    layers = [
        ((*here, "monitoring", "dataCollection"), dep.monitoring.data_collection if dep.monitoring else None),
        (("monitoring", "dataCollection"), monitoring.data_collection if monitoring else None),
    ]
    enabled = next((c.enabled for _, c in layers if c is not None and c.enabled is not None), False)
    sink = next(((path, c.sink) for path, c in layers if c is not None and c.sink is not None), None)
    if enabled and sink is not None and sink[1].kind == "file":
        yield doc.problem(
            (*sink[0], "sink", "kind"),
            f"deployment {deployment_name(dep)} collects to a file in "
            "its pods on Kubernetes, which is lost with each pod",
            "use sink: {kind: http, url: ...} on Kubernetes: CloudEvents to a receiver that "
            "keeps them, where a scheduled drift check reads them",
            severity="warning",
        )


def _known_versions(doc: Document, lock: Lock, here: PathKey, dep: Deployment) -> Iterator[Problem]:
    entry = lock.models.get(dep.model)
    if entry is None:  # nothing registered yet: `plan` asks for registration later
        return
    known = ", ".join(str(n) for n in sorted(entry.versions)) or "none"
    key = "versions" if dep.versions is not None else "alias" if dep.alias else "version"
    for j, ref in enumerate(deployed_refs(dep)):
        if lock.resolve(dep.model, ref) is not None:
            continue
        path = (*here, key, j) if key == "versions" else (*here, key)
        if isinstance(ref, str) and not ref.startswith("sha256:"):
            aliases = ", ".join(sorted(entry.aliases)) or "none"
            yield doc.problem(
                path,
                f"unknown alias {ref!r} of {dep.model}",
                f"expected an alias in mlops.lock: {aliases} (after `mlops-iac "
                "models alias`, run `mlops-iac lock sync`)",
            )
        else:
            yield doc.problem(
                path,
                f"{dep.model}@{ref} is not in mlops.lock",
                f"expected a version in the lock: {known} (register it, then run `mlops-iac lock sync`)",
            )


def _hardware(
    doc: Document,
    here: PathKey,
    dep: Deployment,
    target: LocalTarget | DockerTarget | KubernetesTarget | AzureTarget | None,
) -> Iterator[Problem]:
    hw = dep.hardware
    low, high = hw.replicas.min, hw.replicas.max
    if isinstance(low, int) and isinstance(high, int) and low > high:
        yield doc.problem(
            (*here, "hardware", "replicas", "min"), f"min {low} is above max {high}", "expected min <= max"
        )
    if isinstance(high, int) and high == 0:
        yield doc.problem((*here, "hardware", "replicas", "max"), "got 0", "expected at least 1 replica at most")
    if hw.gpu and target is not None:
        if isinstance(target, LocalTarget):
            yield doc.problem(
                (*here, "hardware", "gpu"),
                f"{hw.gpu} GPU(s) on a local target",
                "a local process cannot reserve GPUs; use a docker or kubernetes target with gpu: true",
            )
        elif not target.gpu:
            yield doc.problem(
                (*here, "hardware", "gpu"),
                f"{hw.gpu} GPU(s) on target {dep.target!r}, which has none",
                f"set gpu: true on targets.{dep.target} or use gpu: 0",
            )
