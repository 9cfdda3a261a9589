"""The review of a deployment change: what a pull request's mlops.yaml and mlops.lock do.

Pure: two resolved specs with their locks in, Markdown out. Per deployment: the versions and
digests before and after, the traffic split, the resources, the profile's p99 and capacity,
whether the model's signature breaks clients, and which resources will be created, kept and
deleted. Bounded: whatever the change, the text stays under GitHub's comment limit; long
parts are folded in <details>, with a count of what was left out.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from .contract import GRPC_PORT
from .lock import Lock, LockedVersion
from .render import macro
from .resolve import ResolvedDeployment, ResolvedSpec, ResolvedVersion

LIMIT = 60_000
MAX_ROWS = 150
MARKER = "<!-- mlops-iac review -->"
TEMPLATE = "markdown/review.md.j2"  # the layout; this module decides what goes in it and how much


@dataclass(frozen=True)
class Side:
    resolved: ResolvedSpec | None  # None: the file does not exist on that side
    lock: Lock


def _deployments(side: Side) -> dict[str, ResolvedDeployment]:
    return {d.name: d for d in side.resolved.deployments} if side.resolved else {}


def _target_kind(side: Side, dep: ResolvedDeployment) -> str:
    assert side.resolved is not None
    return side.resolved.target(dep.target).spec.kind


def resource_names(side: Side, dep: ResolvedDeployment) -> set[str]:
    """What the deployment runs as, by kind and name: the objects `manifests.py` makes for the
    target (so every kind it can create is listed), Docker containers, or a local process."""
    from .manifests import network_name, version_name, version_objects
    from .model_manifests import model_objects
    from .pinned import pin
    from .spec.targets import KubernetesTarget

    assert side.resolved is not None
    target = side.resolved.target(dep.target).spec
    pinned = pin(dep)  # the versions the lock pins: the others have no names yet
    if isinstance(target, KubernetesTarget):
        objects = [
            o
            for v in pinned.versions
            for o in version_objects(side.resolved.project, target, pinned, v, v.image or "", v.onnx_digest or "")
        ]
        objects += model_objects(side.resolved.project, target, pinned)
        return {f"{o['kind']}/{o['metadata']['name']}" for o in objects}
    if target.kind.startswith("azure-"):
        from .azure.views import resource_names as azure_names

        return azure_names(target, dep, pinned)  # type: ignore[arg-type]
    prefix = "Container" if target.kind == "docker" else "process"
    names = {f"{prefix}/{version_name(dep.model, v)}" for v in pinned.versions}  # the shadows' too
    network = network_name(pinned) if target.kind == "docker" else None
    return names | ({f"Network/{network}"} if network is not None else set())


def caveats(side: Side, dep: ResolvedDeployment) -> list[str]:
    """What the target does not deploy, and where `traffic` cannot be honoured."""
    from .model_manifests import skipped
    from .spec.targets import KubernetesTarget

    assert side.resolved is not None
    target = side.resolved.target(dep.target).spec
    if isinstance(target, KubernetesTarget):
        shared = (
            [
                f"in `Namespace/{target.namespace_name}`, which the stack creates and labels for Pod Security "
                "`restricted`"
            ]
            if target.creates_namespace
            else []
        )
        return shared + [f"not deployed: {s}" for s in skipped(target, dep)] + _grpc_route(target, dep)
    if target.kind.startswith("azure-"):
        from .azure.views import caveats as azure_caveats

        return azure_caveats(target, dep)  # type: ignore[arg-type]
    notes = _docker_shadows(dep) if target.kind == "docker" else []
    if target.kind == "docker" and len(dep.served) > 1:
        notes.append(
            "weights are not honoured on a docker target: each version answers on its own host port "
            "(the target's port + version - 1); clients choose"
        )
    if target.kind == "docker" and getattr(target, "grpc_port", None) is None:
        notes.append("gRPC is served inside the container but not published on the host (set the target's `grpcPort`)")
    return notes


def _docker_shadows(dep: ResolvedDeployment) -> list[str]:
    """Where a Docker deployment's shadow runs: a container of its own, which the served versions'
    containers mirror to over the deployment's network (see components/docker.py)."""
    from .manifests import network_name, version_name
    from .pinned import pin

    pinned = pin(dep)
    network = network_name(pinned)
    return [
        f"v{v.number} is a shadow: `Container/{version_name(dep.model, v)}` gets {dep.shadow[v.number]}% of the "
        f"requests, mirrored by the served versions' containers over `Network/{network}`; its answers are never "
        "returned"
        for v in pinned.versions
        if v.number in dep.shadow
    ]


def _grpc_route(target: Any, dep: ResolvedDeployment) -> list[str]:
    """How gRPC clients reach a Kubernetes deployment: the gateway's HTTPRoute carries REST only."""
    if target.gateway is None:
        return []
    split = ", so gRPC follows replica counts, not `traffic`" if len(dep.versions) > 1 else ""
    return [
        f"gRPC (port {GRPC_PORT}, `grpc`) is reached in the cluster on `Service/{dep.name}` or a version's own "
        f"Service; the HTTPRoute carries REST only{split}"
    ]


def _label(v: ResolvedVersion) -> str:
    """`v3`, or the reference as written (an alias) while the lock does not pin it yet."""
    return f"v{v.number}" if v.number is not None else f"@{v.ref} (not pinned)"


def _version_cell(v: ResolvedVersion) -> str:
    digest = (v.digest or "unpinned").removeprefix("sha256:")[:12]
    return f"{_label(v)} `{digest}` {v.weight}%"


def _resources(v: ResolvedVersion) -> str:
    hw = v.hardware
    return (
        f"{hw.cpu_millis}m/{hw.cpu_limit_millis}m cpu, {hw.memory_bytes // 2**20}Mi memory, "
        f"{hw.replicas_min}-{hw.replicas_max} replicas" + (f", {hw.gpu} GPU" if hw.gpu else "")
    )


def _speed(facts: LockedVersion | None) -> str:
    if facts is None or facts.recommendation is None:
        return "not profiled"
    rec = facts.recommendation
    http = (facts.profile or {}).get("http", [])
    p99 = min((r["p99Ms"] for r in http), default=None)
    text = f"{rec.capacity_rps or 0:,.0f} req/s per replica"
    return text + (f", best p99 {p99:g} ms" if p99 is not None else "")


def _breaking(before: Side, after: Side, old: ResolvedDeployment | None, new: ResolvedDeployment) -> list[str]:
    """Clients of the versions served before vs. the versions served after."""
    from .signatures import breaking_changes

    def signature(side: Side, model: str, v: ResolvedVersion) -> dict[str, Any] | None:
        facts = side.lock.version(model, v.number) if v.number else None
        if facts is None or facts.onnx is None:
            return None
        return {
            "inputs": [t.model_dump(mode="json") for t in facts.onnx.inputs],
            "outputs": [t.model_dump(mode="json") for t in facts.onnx.outputs],
        }

    if old is None:
        return []
    # What clients were built against: the version that took the most traffic before.
    served = sorted(old.versions, key=lambda v: -v.weight)
    previous = next((s for s in (signature(before, old.model, v) for v in served) if s), None)
    problems = []
    for v in new.versions:
        current = signature(after, new.model, v)
        if current and previous:
            problems += [f"{_label(v)}: {p}" for p in breaking_changes(previous, current)]
    return problems


def review(before: Side, after: Side) -> str:
    old, new = _deployments(before), _deployments(after)
    names = sorted(old.keys() | new.keys())
    rows, sections = [], []
    for name in names:
        a, b = old.get(name), new.get(name)
        if a == b and a is not None and _facts(before, a) == _facts(after, a):
            continue
        rows.append(_row(name, a, b))
        sections.append(_section(before, after, name, a, b))
    if not rows:
        return macro(TEMPLATE, "unchanged", marker=MARKER, count=len(names))
    head = macro(
        TEMPLATE, "head", marker=MARKER, changed=len(rows), rows=rows[:MAX_ROWS], left_out=max(0, len(rows) - MAX_ROWS)
    )
    return _bounded(head, sections)


def _facts(side: Side, dep: ResolvedDeployment) -> list[Any]:
    return [side.lock.version(dep.model, v.number) if v.number else None for v in dep.versions]


def _row(name: str, a: ResolvedDeployment | None, b: ResolvedDeployment | None) -> dict[str, str]:
    change = "added" if a is None else "removed" if b is None else "changed"
    before, after = (", ".join(_version_cell(v) for v in d.versions) if d else "-" for d in (a, b))
    return {"name": name, "change": change, "before": before, "after": after}


def _section(before: Side, after: Side, name: str, a: ResolvedDeployment | None, b: ResolvedDeployment | None) -> str:
    was = resource_names(before, a) if a else set()
    will = resource_names(after, b) if b else set()
    changes = [
        {"title": title, "count": len(items), "shown": sorted(items)[:40], "more": max(0, len(items) - 40)}
        for title, items in (("create", will - was), ("keep", will & was), ("delete", was - will))
        if items
    ]
    if b is None:
        return macro(
            TEMPLATE,
            "section",
            name=name,
            after=False,
            breaking=[],
            versions=[],
            columns=[],
            caveats=[],
            changes=changes,
        )
    versions = []
    for v in b.versions:
        facts = after.lock.version(b.model, v.number) if v.number else None
        prior = next((p for p in (a.versions if a else ()) if p.number == v.number), None)
        resources = (
            _resources(v)
            if prior is None or prior.hardware == v.hardware
            else f"{_resources(prior)} → **{_resources(v)}**"
        )
        traffic = f"{v.weight}%" if prior is None or prior.weight == v.weight else f"{prior.weight}% → **{v.weight}%**"
        versions.append(
            {
                "label": _label(v),
                "new": "(new)" if prior is None else "",
                "traffic": traffic,
                "resources": resources,
                "speed": _speed(facts),
            }
        )
    columns = [_columns(v.number, after.lock.version(b.model, v.number) if v.number else None) for v in b.versions]
    return macro(
        TEMPLATE,
        "section",
        name=name,
        after=True,
        breaking=_breaking(before, after, a, b),
        versions=versions,
        columns=[c for c in columns if c],
        caveats=caveats(after, b),
        changes=changes,
    )


def _columns(number: int | None, facts: LockedVersion | None) -> dict[str, Any] | None:
    """The columns a DataFrame pipeline's version takes (one input per column), with their types."""
    inputs = facts.onnx.inputs if facts is not None and facts.onnx is not None else ()
    if len(inputs) < 2 or any(list(t.shape) != [-1, 1] for t in inputs):
        return None
    shown = [f"`{t.name}` {t.datatype}" for t in inputs[:30]]
    return {"number": number, "count": len(inputs), "shown": shown, "more": len(inputs) - len(shown)}


def _bounded(head: str, sections: list[str]) -> str:
    """Sections in full while they fit, then folded; the rest counted, never cut mid-way."""
    out = [head]
    size = len(head)
    left = 0
    for i, section in enumerate(sections):
        piece = (
            section
            if i < 20
            else macro(TEMPLATE, "folded", summary=section.splitlines()[0].lstrip("# "), section=section)
        )
        if size + len(piece) > LIMIT - 500:
            left = len(sections) - i
            break
        out.append(piece)
        size += len(piece)
    if left:
        out.append(macro(TEMPLATE, "left_out", count=left))
    return "\n".join(out)
