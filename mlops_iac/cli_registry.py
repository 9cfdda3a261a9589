"""CLI commands of the model registry: `register`, `models ...` and `lock sync`."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, get_args

import click

from .console import prepare_onnx
from .console import registry_file_option as file_option
from .errors import MlopsIacError, RegistryError
from .lock import Lock, update_lock
from .registry import Ref, parse_ref
from .registry.archive import export_archive, import_archive
from .spec.models import Framework
from .workspace import pin_in_lock, project_registry, require_project, stored_facts, users_of
from .workspace.intake import checked_framework

FRAMEWORKS = list(get_args(Framework))  # the spec's type is the one list


def _pairs(values: tuple[str, ...], what: str) -> dict[str, str]:
    out = {}
    for item in values:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise click.BadParameter(f"{item!r}: expected KEY=VALUE", param_hint=what)
        out[key] = value
    return out


def _metrics(values: tuple[str, ...]) -> dict[str, float]:
    out = {}
    for key, value in _pairs(values, "--metric").items():
        try:
            out[key] = float(value)
        except ValueError:
            raise click.BadParameter(f"{key}={value}: the value must be a number", param_hint="--metric") from None
    return out


def safe_source(path: Path, root: Path) -> Path:
    """The file to register; a link that leads out of the project folder is refused."""
    if not path.exists():
        raise RegistryError(f"{path} does not exist")
    if path.is_symlink() and not path.resolve().is_relative_to(root.resolve()):
        raise RegistryError(f"{path} is a symbolic link out of {root}; register the file itself")
    if not path.is_file():
        raise RegistryError(f"{path} is not a regular file")
    try:
        with open(path, "rb"):
            pass
    except OSError as exc:
        raise RegistryError(f"cannot read {path}: {exc.strerror}") from None
    return path


@click.command()
@click.argument("model")
@click.option(
    "--file", "source", required=True, type=click.Path(path_type=Path), help="The trained artifact to register."
)
@click.option(
    "--framework",
    type=click.Choice(FRAMEWORKS),
    help="Default: the model's framework in mlops.yaml, else from the file's suffix.",
)
@click.option("--tag", "tags", multiple=True, metavar="KEY=VALUE", help="A tag (repeatable).")
@click.option("--metric", "metrics", multiple=True, metavar="KEY=NUMBER", help="A metric (repeatable).")
@click.option(
    "-c",
    "--config",
    "file",
    default="mlops.yaml",
    show_default=True,
    type=click.Path(dir_okay=False, path_type=Path),
    help="The mlops.yaml to use.",
)
def register(
    model: str, source: Path, framework: str | None, tags: tuple[str, ...], metrics: tuple[str, ...], file: Path
) -> None:
    """Store an artifact as the next version of MODEL and print MODEL@N and its digest.

    Registering the same bytes again returns the existing version. When MODEL is declared in
    mlops.yaml, the version is pinned in mlops.lock too.
    """
    require_project(file, "mlops-iac register", "--config")
    registry, ws = project_registry(file, against_lock=False)
    root = ws.root if ws else Path.cwd()
    path = safe_source(source, root)
    chosen = checked_framework(model, path, framework, ws)  # ONNX is checked before anything is stored
    version, created = registry.register(
        model, path, chosen, tags=_pairs(tags, "--tag"), metrics=_metrics(metrics), source=str(source)
    )
    note = "" if created else " (already registered: same bytes)"
    click.echo(f"{model}@{version.version} {version.digest}{note}")
    if ws is not None and users_of(ws, version, lock=False):
        pin_in_lock(ws, version, registry)
        click.echo(f"pinned {model}@{version.version} in mlops.lock")
    if chosen == "onnx":
        prepare_onnx(registry, file if ws else None, version)


@click.group()
def models() -> None:
    """List, inspect, tag, alias, pull, delete, export and import model versions."""


@models.command("list")
@click.argument("model", required=False)
@file_option
@click.option("--json", "as_json", is_flag=True)
def list_models(model: str | None, file: Path, as_json: bool) -> None:
    """The models, or the versions of MODEL."""
    registry, _ = project_registry(file, against_lock=False)
    if model is None:
        rows = []
        for name in registry.models():
            index = registry.index(name)
            rows.append(
                {
                    "model": name,
                    "versions": len(index.versions),
                    "latest": max(index.versions, default=None),
                    "aliases": dict(sorted(index.aliases.items())),
                }
            )
        _emit(rows, as_json, ["model", "versions", "latest", "aliases"])
        return
    index = registry.index(model)
    aliases = {n: sorted(a for a, m in index.aliases.items() if m == n) for n in index.versions}
    rows = [
        {
            "version": n,
            "digest": v.digest,
            "size": v.size,
            "framework": v.framework,
            "status": v.status,
            "created": v.lineage.created,
            "aliases": aliases[n],
            "tags": v.tags,
        }
        for n, v in sorted(index.versions.items())
    ]
    _emit(rows, as_json, ["version", "digest", "size", "framework", "status", "created", "aliases"])


def _emit(rows: list[dict[str, Any]], as_json: bool, columns: list[str]) -> None:
    if as_json:
        click.echo(json.dumps(rows, indent=2, sort_keys=True))
        return
    from rich.console import Console
    from rich.table import Table

    table = Table(*columns)
    for row in rows:
        table.add_row(*(_cell(row[c]) for c in columns))
    Console(width=200).print(table)


def _cell(value: Any) -> str:
    if isinstance(value, dict):
        return ", ".join(f"{k}={v}" for k, v in value.items()) or "-"
    if isinstance(value, list):
        return ", ".join(map(str, value)) or "-"
    if isinstance(value, str) and value.startswith("sha256:"):
        return value[:19]
    return "-" if value is None else str(value)


@models.command("show")
@click.argument("ref")
@file_option
@click.option("--json", "as_json", is_flag=True)
def show(ref: str, file: Path, as_json: bool) -> None:
    """Everything about one version: MODEL, MODEL@N, MODEL@alias or MODEL@sha256:..."""
    registry, _ = project_registry(file, against_lock=False)
    parsed = parse_ref(ref)
    index = registry.index(parsed.model)
    version = registry.resolve(parsed)
    data = version.model_dump(mode="json")
    data["aliases"] = sorted(a for a, n in index.aliases.items() if n == version.version)
    data["history"] = [e.model_dump(mode="json") for e in index.history if e.version == version.version]
    if as_json:
        click.echo(json.dumps(data, indent=2, sort_keys=True))
        return
    click.echo(f"{version.model}@{version.version}  {version.digest}  {version.size} bytes")
    click.echo(f"  framework  {version.framework}   status {version.status}")
    click.echo(f"  aliases    {', '.join(data['aliases']) or '-'}")
    click.echo(f"  tags       {_cell(version.tags)}")
    click.echo(f"  metrics    {_cell(version.metrics)}")
    lineage = version.lineage
    click.echo(
        f"  lineage    {lineage.source} at {lineage.created}; commit {lineage.git_commit or '-'}"
        f"; CI run {lineage.ci_run or '-'}; by {lineage.user or '-'}"
    )
    for kind, artifact in sorted(version.artifacts.items()):
        click.echo(f"  artifact   {kind}: {artifact.digest} ({artifact.size} bytes) from {artifact.derived_from[:19]}")
        for key, value in sorted(artifact.facts.items()):
            click.echo(f"             {key}: {json.dumps(value, sort_keys=True)}")
    click.echo("  history")
    for event in data["history"]:
        click.echo(f"    {event['time']}  {event['action']:8} {json.dumps(event['detail'], sort_keys=True)}")


@models.command("tag")
@click.argument("ref")
@click.argument("tags", nargs=-1, metavar="KEY=VALUE...")
@click.option("--remove", "remove", multiple=True, metavar="KEY", help="Remove a tag (repeatable).")
@file_option
def tag(ref: str, tags: tuple[str, ...], remove: tuple[str, ...], file: Path) -> None:
    """Set or remove tags of a version."""
    if not tags and not remove:
        raise click.UsageError("give KEY=VALUE tags to set or --remove KEY")
    registry, _ = project_registry(file, against_lock=False)
    version = registry.tag(parse_ref(ref), _pairs(tags, "TAGS"), remove)
    click.echo(f"{version.model}@{version.version} tags: {_cell(version.tags)}")


@models.command("alias")
@click.argument("ref")
@click.argument("alias")
@file_option
def alias(ref: str, alias: str, file: Path) -> None:
    """Point ALIAS (e.g. production) at a version; the move is recorded in the history."""
    registry, _ = project_registry(file, against_lock=False)
    version = registry.alias(parse_ref(ref), alias)
    click.echo(
        f"{version.model}@{alias} -> {version.version}; run `mlops-iac lock sync` to "
        "take it into mlops.lock (deployments follow the lock, after review)"
    )


@models.command("unalias")
@click.argument("model")
@click.argument("alias")
@file_option
def unalias(model: str, alias: str, file: Path) -> None:
    """Remove an alias."""
    registry, _ = project_registry(file, against_lock=False)
    registry.unalias(model, alias)
    click.echo(f"{model}@{alias} removed")


@models.command("pull")
@click.argument("ref")
@click.option("--to", "dest", required=True, type=click.Path(path_type=Path), help="Where to write it.")
@click.option("--artifact", default=None, help="A linked artifact (e.g. onnx) instead of the original.")
@click.option("--force", is_flag=True, help="Overwrite an existing file.")
@file_option
def pull(ref: str, dest: Path, artifact: str | None, force: bool, file: Path) -> None:
    """Write a version's bytes (verified against its digest) to a file."""
    if dest.is_dir():
        raise click.UsageError(f"{dest} is a folder; give a file name")
    if dest.exists() and not force:
        raise click.UsageError(f"{dest} exists; pass --force to overwrite it")
    registry, _ = project_registry(file, against_lock=False)
    version = registry.pull(parse_ref(ref), dest, artifact)
    click.echo(f"{version.model}@{version.version} -> {dest}")


@models.command("delete")
@click.argument("ref")
@file_option
def delete(ref: str, file: Path) -> None:
    """Delete a version that no deployment, lock pin or alias uses (there is no --force)."""
    registry, ws = project_registry(file, against_lock=False)
    parsed = parse_ref(ref)
    if parsed.selector is None:
        raise click.UsageError("name the version to delete: MODEL@N")
    version = registry.delete(parsed, lambda v: users_of(ws, v))
    click.echo(f"deleted {version.model}@{version.version} ({version.digest}); its number will not be reused")


@models.command("export")
@click.argument("archive", type=click.Path(dir_okay=False, path_type=Path))
@click.argument("names", nargs=-1, metavar="[MODEL]...")
@file_option
def export(archive: Path, names: tuple[str, ...], file: Path) -> None:
    """Write a portable archive (tar.gz) of models: their indexes and blobs."""
    registry, _ = project_registry(file, against_lock=False)
    written = export_archive(registry, archive, list(names) or None)
    click.echo(f"exported {', '.join(written) or 'nothing'} to {archive}")


@models.command("import")
@click.argument("archive", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@file_option
def import_(archive: Path, file: Path) -> None:
    """Import an archive made by `models export` (digests verified first)."""
    registry, _ = project_registry(file, against_lock=False)
    imported = import_archive(registry, archive)
    click.echo(f"imported {', '.join(imported) or 'nothing'}")


@click.command("sync")
@file_option
def lock_sync(file: Path) -> None:
    """Make mlops.lock pin exactly what mlops.yaml's deployments name, from the registry.

    Versions and aliases are resolved in the registry; facts already known about a pinned
    version are kept; pins that no deployment names any more are dropped.
    """
    registry, ws = project_registry(file, against_lock=False)
    if ws is None:
        raise MlopsIacError(f"{file} not found")
    lines: list[str] = []

    def change(lock: Lock) -> Lock:
        names = {d.name for d in ws.resolved.deployments}  # a rollout's step is a fact too: keep it
        new = Lock(rollouts={k: v for k, v in lock.rollouts.items() if k in names})
        for dep in ws.resolved.deployments:
            for v in dep.versions:
                version = registry.resolve(Ref(dep.model, v.ref))
                if isinstance(v.ref, str) and not v.ref.startswith("sha256:"):
                    new = new.with_alias(dep.model, v.ref, version.version)
                known = lock.version(dep.model, version.version)
                if known is not None and known.digest != version.digest:
                    raise RegistryError(
                        f"mlops.lock pins {dep.model}@{version.version} to "
                        f"{known.digest}, the registry has {version.digest}"
                    )
                new = new.with_version(dep.model, version.version, stored_facts(registry, version, known))
                lines.append(f"{dep.name}: {dep.model}@{v.ref} -> {version.version} {version.digest}")
        return new

    before = ws.lock
    after = update_lock(ws.lock_path, change)
    for line in sorted(set(lines)):
        click.echo(line)
    click.echo("mlops.lock " + ("updated" if after != before else "already up to date"))


@click.command("pending")
@file_option
@click.option(
    "--stage",
    type=click.Choice(["convert", "profile", "build", "deployed"]),
    required=True,
    help="Which facts are missing: the ONNX conversion, the profile, or the pushed image "
    "(deployed: list every deployed version).",
)
def lock_pending(file: Path, stage: str) -> None:
    """Print, one per line, the deployed versions (MODEL@N) whose lock entry lacks a stage's facts:
    what a workflow still has to convert, profile or build."""
    _, ws = project_registry(file, against_lock=False)
    if ws is None:
        raise MlopsIacError(f"{file} not found")
    section = {"convert": "onnx", "profile": "recommendation", "build": "image", "deployed": ""}[stage]
    seen: list[str] = []
    for dep in ws.resolved.deployments:
        for v in dep.versions:
            facts = ws.lock.version(dep.model, v.number) if v.number is not None else None
            ref = f"{dep.model}@{v.number if v.number is not None else v.ref}"
            missing = facts is None or (section and getattr(facts, section) is None)
            if (missing or stage == "deployed") and ref not in seen:
                seen.append(ref)
    for ref in seen:
        click.echo(ref)
