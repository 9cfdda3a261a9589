"""Cross-section checks of mlops.yaml: pure, and every problem reported at once.

Pydantic checks each section by itself; here we check what sections say about each other
(a deployment's model and target exist, traffic sums to 100, ...) and what the file says
about the disk (paths exist). Each check returns problems; none raises.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

from .errors import Problem
from .loader import Document, PathKey
from .lock import Lock
from .spec import Deployment, Spec
from .spec.targets import DockerTarget, KubernetesTarget, LocalTarget

DATA_SUFFIXES = (".npy", ".npz", ".csv", ".parquet")


def deployment_name(dep: Deployment) -> str:
    return dep.name or f"{dep.model}-{dep.target}"


def deployed_refs(dep: Deployment) -> tuple[int | str, ...]:
    """The versions a deployment runs, as written (numbers, aliases or digests)."""
    if dep.versions is not None:
        return dep.versions
    if dep.version is not None:
        return (dep.version,)
    if dep.alias is not None:
        return (dep.alias,)
    return ()


def check(spec: Spec, doc: Document, lock: Lock | None, root: Path | None) -> list[Problem]:
    """Every cross-section problem; versions are checked against `lock` unless it is None, and
    paths against the disk unless `root` is None (a file read from another commit)."""
    problems = [*_duplicate_names(spec, doc), *(_paths(spec, doc, root) if root is not None else [])]
    for i, dep in enumerate(spec.deployments):
        problems.extend(_deployment(spec, doc, lock, i, dep))
    return problems


def _duplicate_names(spec: Spec, doc: Document) -> Iterator[Problem]:
    seen: dict[str, int] = {}
    for i, model in enumerate(spec.models):
        if model.name in seen:
            yield doc.problem(("models", i, "name"), f"duplicate model name {model.name!r}",
                              f"each model is named once; models[{seen[model.name]}] has it")
        seen.setdefault(model.name, i)
    names: dict[str, int] = {}
    for i, dep in enumerate(spec.deployments):
        name = deployment_name(dep)
        if name in names:
            where = ("deployments", i, "name") if dep.name else ("deployments", i)
            yield doc.problem(where, f"duplicate deployment name {name!r}",
                              f"give each deployment its own name; deployments[{names[name]}] "
                              "has it (the default name is <model>-<target>)")
        names.setdefault(name, i)


def _paths(spec: Spec, doc: Document, root: Path) -> Iterator[Problem]:
    for i, model in enumerate(spec.models):
        here: PathKey = ("models", i)
        if not (root / model.source).exists():
            if model.train:
                yield doc.problem((*here, "source"), f"{model.source} does not exist yet",
                                  "it will be written by the model's `train` command",
                                  severity="warning")
            else:
                yield doc.problem((*here, "source"), f"{model.source} does not exist",
                                  "a path to the trained artifact, relative to the folder of "
                                  f"{doc.file}")
        yield from _data_file(doc, root, (*here, "sample"), model.sample, bool(model.train))
        if model.validate_ is not None:
            yield from _data_file(doc, root, (*here, "validate", "dataset"),
                                  model.validate_.dataset, bool(model.train))
        for key, value in (("handler", model.handler),
                           ("build.extraSteps", model.build.extra_steps if model.build else None)):
            yield from _existing(doc, root, (*here, *key.split(".")), value)
    yield from _existing(doc, root, ("build", "extraSteps"), spec.build.extra_steps)
    yield from _existing(doc, root, ("monitoring", "drift", "baseline"),
                         spec.monitoring.drift.baseline)


def _existing(doc: Document, root: Path, path: PathKey, value: str | None) -> Iterator[Problem]:
    if value is not None and not (root / value).exists():
        yield doc.problem(path, f"{value} does not exist",
                          f"a path relative to the folder of {doc.file}")


def _data_file(doc: Document, root: Path, path: PathKey, value: str | None,
               made_by_train: bool) -> Iterator[Problem]:
    if value is None:
        return
    if not value.endswith(DATA_SUFFIXES):
        yield doc.problem(path, f"got {value!r}", "expected a data file ending in "
                          + ", ".join(DATA_SUFFIXES))
    elif not (root / value).exists():
        if made_by_train:
            yield doc.problem(path, f"{value} does not exist yet",
                              "it will be written by the model's `train` command",
                              severity="warning")
        else:
            yield doc.problem(path, f"{value} does not exist",
                              f"a path relative to the folder of {doc.file}")


def _deployment(spec: Spec, doc: Document, lock: Lock | None, i: int,
                dep: Deployment) -> Iterator[Problem]:
    here: PathKey = ("deployments", i)
    models = [m.name for m in spec.models]
    if dep.model not in models:
        yield doc.problem((*here, "model"), f"unknown model {dep.model!r}",
                          "expected one of the models: " + ", ".join(models))
    target = spec.targets.get(dep.target)
    if target is None:
        yield doc.problem((*here, "target"), f"unknown target {dep.target!r}",
                          "expected one of the targets: " + ", ".join(spec.targets))
    yield from _selection(doc, here, dep)
    yield from _traffic(doc, here, dep)
    if dep.model in models and lock is not None:
        yield from _known_versions(doc, lock, here, dep)
    yield from _hardware(doc, here, dep, target)
    yield from _batch(doc, here, dep)


def _batch(doc: Document, here: PathKey, dep: Deployment) -> Iterator[Problem]:
    if dep.kind == "batch" and dep.batch is None:
        yield doc.problem((*here, "kind"), "a batch deployment without batch settings",
                          "add batch: {input: [...], output: ...}")
    if dep.kind == "online" and dep.batch is not None:
        yield doc.problem((*here, "batch"), "batch settings on an online deployment",
                          "add kind: batch, or remove batch", of_key=True)
    if dep.kind == "batch" and (dep.versions is not None or dep.traffic is not None):
        key = "versions" if dep.versions is not None else "traffic"
        yield doc.problem((*here, key), "a batch deployment scores with one version",
                          "expected version or alias, without traffic", of_key=True)


def _selection(doc: Document, here: PathKey, dep: Deployment) -> Iterator[Problem]:
    given = [k for k, v in (("version", dep.version), ("alias", dep.alias),
                            ("versions", dep.versions)) if v is not None]
    if len(given) != 1:
        found = "none of them" if not given else " and ".join(given)
        yield doc.problem(here if not given else (*here, given[1]),
                          f"a deployment names its versions once; found {found}",
                          "expected exactly one of: version, alias, versions", of_key=True)
    if dep.versions is not None and len(set(dep.versions)) != len(dep.versions):
        yield doc.problem((*here, "versions"), "a version is listed twice",
                          "list each version once")


def _traffic(doc: Document, here: PathKey, dep: Deployment) -> Iterator[Problem]:
    refs = deployed_refs(dep)
    if dep.traffic is None:
        if len(refs) > 1:
            yield doc.problem((*here, "versions"), f"{len(refs)} versions and no traffic",
                              "add traffic: a percent per version, summing to 100", of_key=True)
        return
    for ref, weight in dep.traffic.items():
        if ref not in refs:
            yield doc.problem((*here, "traffic", ref), f"traffic names version {ref!r}, "
                              "which this deployment does not deploy",
                              "expected one of: " + ", ".join(str(r) for r in refs), of_key=True)
        if not 0 <= weight <= 100:
            yield doc.problem((*here, "traffic", ref), f"got {weight}",
                              "expected a percent from 0 to 100")
    total = sum(dep.traffic.values())
    if total != 100:
        yield doc.problem((*here, "traffic"), f"the weights sum to {total}",
                          "expected weights that sum to 100", of_key=True)


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
            yield doc.problem(path, f"unknown alias {ref!r} of {dep.model}",
                              f"expected an alias in mlops.lock: {aliases} (after `mlops-iac "
                              "models alias`, run `mlops-iac lock sync`)")
        else:
            yield doc.problem(path, f"{dep.model}@{ref} is not in mlops.lock",
                              f"expected a version in the lock: {known} (register it, then "
                              "run `mlops-iac lock sync`)")


def _hardware(doc: Document, here: PathKey, dep: Deployment,
              target: LocalTarget | DockerTarget | KubernetesTarget | None) -> Iterator[Problem]:
    hw = dep.hardware
    low, high = hw.replicas.min, hw.replicas.max
    if isinstance(low, int) and isinstance(high, int) and low > high:
        yield doc.problem((*here, "hardware", "replicas", "min"), f"min {low} is above max {high}",
                          "expected min <= max")
    if isinstance(high, int) and high == 0:
        yield doc.problem((*here, "hardware", "replicas", "max"), "got 0",
                          "expected at least 1 replica at most")
    if hw.gpu and target is not None:
        if isinstance(target, LocalTarget):
            yield doc.problem((*here, "hardware", "gpu"), f"{hw.gpu} GPU(s) on a local target",
                              "a local process cannot reserve GPUs; use a docker or kubernetes "
                              "target with gpu: true")
        elif not target.gpu:
            yield doc.problem((*here, "hardware", "gpu"),
                              f"{hw.gpu} GPU(s) on target {dep.target!r}, which has none",
                              f"set gpu: true on targets.{dep.target} or use gpu: 0")
