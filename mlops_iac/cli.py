"""The `mlops-iac` command: parse flags, call the API, print. Nothing else lives here."""

from __future__ import annotations

import json
import re
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click

from . import __version__
from .commands import COMMANDS, LOCK_COMMANDS, LazyGroup
from .console import DEFAULT_FILE, file_option, open_workspace, print_problems
from .errors import ConfigError, MlopsIacError
from .fsutil import atomic_write

if TYPE_CHECKING:  # a command imports what it needs when it runs: `--help` loads none of it
    from .plan import Plan
    from .resolve import Workspace


class Group(LazyGroup):
    """Errors the user can cause exit 1 with their message and no traceback."""

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except MlopsIacError as exc:
            if ctx.obj and ctx.obj.get("debug"):
                raise
            _print_error(exc)
            sys.exit(1)
        except OSError as exc:  # the disk or the network said no: the user's to fix, with the path
            if ctx.obj and ctx.obj.get("debug"):
                raise
            where = f"{exc.filename}: " if exc.filename else ""
            click.secho(f"error: {where}{exc.strerror or exc}", fg="red", err=True)
            sys.exit(1)


def _print_error(exc: MlopsIacError) -> None:
    if isinstance(exc, ConfigError):
        errors = [p for p in exc.problems if p.severity == "error"]
        print_problems(exc.problems)
        click.secho(f"{len(errors)} problem(s) found", fg="red", err=True)
    else:
        click.secho(f"error: {exc}", fg="red", err=True)


@click.group(cls=Group, lazy=COMMANDS, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="mlops-iac")
@click.option("--debug", is_flag=True, help="Show tracebacks for errors.")
@click.pass_context
def main(ctx: click.Context, debug: bool) -> None:
    """Ship model versions like infrastructure: declared in mlops.yaml, facts in mlops.lock."""
    ctx.obj = {"debug": debug}


INIT_SCHEMA = "mlops.schema.json"


def _check_model_name(model: str) -> None:
    """The starter must validate, so its model name follows the same rule as in mlops.yaml."""
    from pydantic_core import PydanticCustomError

    from .spec.types import parse_name

    try:
        parse_name(model)
    except PydanticCustomError as exc:
        raise click.BadParameter(exc.message(), param_hint="--model") from None


@main.command()
@click.argument("directory", default=".", type=click.Path(file_okay=False, path_type=Path))
@click.option("--model", default="model", show_default=True, help="Name of the first model.")
@click.option("--force", is_flag=True, help="Overwrite an existing mlops.yaml (and train.py).")
def init(directory: Path, model: str, force: bool) -> None:
    """Write a commented starter mlops.yaml into DIRECTORY, a starter train.py that writes the
    artifacts it names, the JSON Schema that the file's `$schema` line points at, and a
    .gitignore for what the tool and training make (an existing one gains what it lacks)."""
    from .render import render
    from .schema import json_schema_text

    target = directory / DEFAULT_FILE
    if target.exists() and not force:
        raise click.UsageError(f"{target} exists; pass --force to overwrite it")
    _check_model_name(model)
    project = re.sub(r"[^a-z0-9-]+", "-", directory.resolve().name.lower()).strip("-") or "project"
    # A relative $schema resolves for everyone who clones the project, offline, and always
    # matches the mlops-iac version that wrote it (`mlops-iac schema > mlops.schema.json`).
    files = {
        DEFAULT_FILE: render("init/mlops.yaml.j2", project=project[:63], model=model, schema_url=INIT_SCHEMA),
        INIT_SCHEMA: json_schema_text(),
    }
    if force or not (directory / "train.py").exists():
        files["train.py"] = render("init/train.py.j2", model=model)
    from .workspace.starter import gitignore

    ignore = directory / ".gitignore"
    ignored = gitignore(ignore.read_text() if ignore.exists() else None)
    if ignored is not None:  # so that `git add -A` commits intent and facts, not blobs and pickles
        files[".gitignore"] = ignored
    for name, text in files.items():
        atomic_write(directory / name, text.encode("utf-8"))
    click.echo(f"wrote {', '.join(str(directory / n) for n in files)}")
    enter = "" if directory.resolve() == Path.cwd().resolve() else f"cd {directory} && "
    click.echo(f"next: {enter}python train.py && mlops-iac register {model} --file model.joblib")


@main.command()
@file_option
@click.option("--json", "as_json", is_flag=True, help="Print problems as JSON.")
def validate(file: Path, as_json: bool) -> None:
    """Check mlops.yaml (and mlops.lock) and print every problem at once."""
    from .resolve import load

    try:
        ws = load(file)
    except ConfigError as exc:
        if not as_json:
            raise
        click.echo(json.dumps([p.__dict__ for p in exc.problems], indent=2))
        sys.exit(1)
    if as_json:
        click.echo(json.dumps([p.__dict__ for p in ws.warnings], indent=2))
        return
    print_problems(ws.warnings)
    spec = ws.spec
    click.echo(
        f"{file}: valid ({len(spec.models)} model(s), {len(spec.targets)} target(s), "
        f"{len(spec.deployments)} deployment(s))"
    )


@main.command()
@click.option("--openapi", is_flag=True, help="The model server's OpenAPI document instead.")
@click.option("--check", is_flag=True, help="Exit 1 when the committed copy in schemas/ is stale.")
def schema(openapi: bool, check: bool) -> None:
    """Print the JSON Schema of mlops.yaml (for editors' YAML language server)."""
    from .schema import OPENAPI_FILE, SCHEMA_FILE, json_schema_text, openapi_text

    text, committed = (openapi_text(), OPENAPI_FILE) if openapi else (json_schema_text(), SCHEMA_FILE)
    if check:
        current = Path(committed)
        if not current.exists():
            raise MlopsIacError(
                f"{committed} not found: run `mlops-iac schema --check` from the root of "
                "the mlops-iac repository, where the committed copy lives"
            )
        if current.read_text() != text:
            flag = " --openapi" if openapi else ""
            raise MlopsIacError(f"{committed} is stale; regenerate it with `mlops-iac schema{flag} > {committed}`")
        return
    click.echo(text, nl=False)


@main.group(cls=LazyGroup, lazy=LOCK_COMMANDS)
def lock() -> None:
    """Read mlops.lock, the facts the tool resolved."""


@lock.command("show")
@file_option
@click.option("--json", "as_json", is_flag=True, help="Print the lock as JSON.")
def lock_show(file: Path, as_json: bool) -> None:
    """Show every locked model version and what is known about it."""
    from .lock import read_lock

    path = file.resolve().parent / "mlops.lock"
    current = read_lock(path, str(file.parent / "mlops.lock"))
    if as_json:
        click.echo(
            json.dumps(current.model_dump(mode="json", by_alias=True, exclude_none=True), indent=2, sort_keys=True)
        )
        return
    if not current.models:
        click.echo(f"{path.name}: no model versions locked yet (run mlops-iac register)")
        return
    from rich.console import Console
    from rich.table import Table

    table = Table("model", "version", "aliases", "digest", "onnx", "validated", "resources", "image")
    for name, entry in sorted(current.models.items()):
        for number, facts in sorted(entry.versions.items()):
            aliases = ",".join(a for a, n in sorted(entry.aliases.items()) if n == number)
            rec = facts.recommendation
            table.add_row(
                name,
                str(number),
                aliases or "-",
                facts.digest[:19],
                f"opset {facts.onnx.opset}" if facts.onnx else "-",
                ("yes" if facts.validation.passed else "REJECTED") if facts.validation else "-",
                f"{rec.cpu_millis}m/{rec.memory_bytes // 2**20}Mi" if rec else "-",
                facts.image.reference if facts.image else "-",
            )
    Console(width=160).print(table)


@main.command()
@file_option
@click.option("--target", "targets", multiple=True, help="Only this target (repeatable).")
@click.option(
    "--out",
    type=click.Path(file_okay=False, path_type=Path),
    default=None,
    help="Output folder (default: stacks/ beside mlops.yaml).",
)
@click.option("--dry-run", is_flag=True, help="Show what would change; write nothing.")
@click.option(
    "--contexts/--no-contexts",
    default=True,
    show_default=True,
    help="Also write the build context of every deployed version (under build/).",
)
def synth(file: Path, targets: tuple[str, ...], out: Path | None, dry_run: bool, contexts: bool) -> None:
    """Plan every deployment and write the generated files (plan.json per target), and the
    build context of every deployed version that has an ONNX conversion in mlops.lock."""
    from .plan import plan
    from .writer import apply

    ws = open_workspace(file)
    result = plan(ws.resolved, targets)
    folder = out if out is not None else ws.root / "stacks"
    if contexts and not dry_run:
        _write_contexts(ws, result)
    from .azure.edge import edge_files  # IoT Edge deployment manifests, per device group

    changes = apply((*result.files, *edge_files(result)), folder, dry_run=dry_run)
    for change in changes:
        if change.kind != "same":
            click.echo(f"{'would ' if dry_run else ''}{change.kind} {folder / change.path}")
            if dry_run:
                click.echo(change.diff, nl=False)
    if all(c.kind == "same" for c in changes):
        click.echo(f"{folder}: up to date ({len(changes)} file(s))")


def _write_contexts(ws: Workspace, result: Plan) -> None:
    from .images import context_digest, context_files
    from .registry import parse_ref
    from .workspace import project_registry
    from .workspace.contexts import gather
    from .writer import apply

    registry, _ = project_registry(ws.file, against_lock=False)
    done: set[tuple[str, int]] = set()
    for stack in result.stacks:
        for dep in stack.deployments:
            for v in dep.versions:
                facts = ws.lock.version(dep.model, v.number)
                if (dep.model, v.number) in done:
                    continue
                done.add((dep.model, v.number))
                if facts is None or facts.onnx is None:
                    click.echo(
                        f"no build context for {dep.model}@{v.number}: run `mlops-iac convert "
                        f"{dep.model}@{v.number}` first"
                    )
                    continue
                version = registry.resolve(parse_ref(f"{dep.model}@{v.number}"))
                files = context_files(gather(registry, ws, version, None, False))
                folder = ws.root / "build" / f"{dep.model}-{v.number}"
                apply(files, folder)
                click.echo(f"context {context_digest(files)} of {dep.model}@{v.number} in {folder}")


def run() -> None:
    """Entry point that also turns an interrupt into a quiet exit."""
    try:
        main()
    except KeyboardInterrupt:
        click.echo("interrupted", err=True)
        sys.exit(130)


def _side(file: Path, ref: str | None, *, against_lock: bool = False) -> Any:
    """mlops.yaml and mlops.lock as they are in the working tree (ref None) or at a commit.
    `against_lock`: the change under review is checked as `validate` checks it (a version the
    lock does not pin is an error); the base it is compared with is taken as it was."""
    import subprocess
    import tempfile

    from .lock import Lock
    from .resolve import load
    from .review import Side

    if ref is None:
        if not file.exists():
            return Side(None, Lock())
        ws = load(file, against_lock=against_lock, check_paths=False)
        return Side(ws.resolved, ws.lock)
    folder = file.resolve().parent
    top = subprocess.run(["git", "-C", str(folder), "rev-parse", "--show-toplevel"], capture_output=True, text=True)
    if top.returncode != 0:
        raise MlopsIacError(f"{folder} is not in a git repository: --base needs one")
    relative = folder.relative_to(Path(top.stdout.strip()).resolve())
    with tempfile.TemporaryDirectory() as tmp:
        for name in (file.name, "mlops.lock"):
            shown = subprocess.run(
                ["git", "-C", str(folder), "show", f"{ref}:{(relative / name).as_posix()}"], capture_output=True
            )
            if shown.returncode == 0:
                (Path(tmp) / name).write_bytes(shown.stdout)
            elif b"does not exist" not in shown.stderr and b"exists on disk, but not in" not in shown.stderr:
                raise MlopsIacError(f"git show {ref}:{relative / name} failed: {shown.stderr.decode().strip()}")
        copied = Path(tmp) / file.name
        if not copied.exists():
            return Side(None, Lock())
        ws = load(copied, against_lock=against_lock, check_paths=False)
        return Side(ws.resolved, ws.lock)


@main.command("diff")
@file_option
@click.option("--base", default="HEAD", show_default=True, help="The commit to compare with (e.g. origin/main).")
@click.option("--head", default=None, help="The commit under review (default: the working tree).")
@click.option(
    "--out",
    type=click.Path(dir_okay=False, path_type=Path),
    default=None,
    help="Write the Markdown here instead of standard output.",
)
def diff(file: Path, base: str, head: str | None, out: Path | None) -> None:
    """The review of a deployment change, in Markdown: per deployment the versions and digests,
    the traffic, resources and profile before and after, a breaking signature, and what will
    be created, kept and deleted. Always under 60,000 characters (one pull request comment)."""
    from .review import review

    text = review(_side(file, base), _side(file, head))
    if out is None:
        click.echo(text, nl=False)
    else:
        atomic_write(out, text.encode())
        click.echo(f"wrote {out} ({len(text):,} characters)")
    # The review shows an unpinned version as such; the change still fails as `validate` fails it.
    _side(file, head, against_lock=True)
