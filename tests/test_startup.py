"""Start-up: a command loads what it runs on, and `--help` lists every command without
loading any of their modules (a rollout loop and the workflow call the CLI many times)."""

from __future__ import annotations

import importlib
import json
import pkgutil
import shutil
import subprocess
import sys
from pathlib import Path

import click
import pytest
from click.testing import CliRunner

import mlops_iac
from mlops_iac.cli import main
from mlops_iac.commands import COMMANDS, LOCK_COMMANDS, Lazy, LazyGroup

from .conftest import QUICKSTART, installed_env

# What a command pulls in that `--help` has no use for: native runtimes, the server's stack,
# the template engine, the spec's pydantic models and the project's rooms built on them.
RUNTIMES = ("numpy", "onnx", "onnxruntime", "pyarrow", "sklearn", "torch", "pulumi")
SERVING = ("jinja2", "httpx", "uvicorn", "grpc", "rich")
ROOMS = ("mlops_iac.registry", "mlops_iac.convert", "mlops_iac.workspace")
HEAVY = (
    *RUNTIMES,
    *SERVING,
    "yaml",
    "pydantic",
    "pydantic_core",
    "mlops_iac.spec",
    "mlops_iac.loader",
    "mlops_iac.lock",
    "mlops_iac.resolve",
    *ROOMS,
    "mlops_iac.serving",
    "mlops_iac.scoring",
)
# `validate` needs the loader and the spec's models (pydantic, yaml), nothing that runs a model
# or renders files.
NOT_FOR_VALIDATE = (
    *RUNTIMES,
    *SERVING,
    *ROOMS,
    "mlops_iac.plan",
    "mlops_iac.render",
    "packaging",  # parses `project.mlopsIac`, not needed for its default
)

WIDTH = 78  # click's listing in 80 columns (COLUMNS), less its margin of 2

# Runs the console script's entry point as `mlops-iac ARGS...`, then writes what it imported.
PROBE = """
import json, sys
out, sys.argv = sys.argv[1], ["mlops-iac", *sys.argv[2:]]
from mlops_iac.cli import run
try:
    run()
finally:
    with open(out, "w") as f:
        json.dump(sorted(sys.modules), f)
"""


def imported(args: list[str], cwd: Path, tmp_path: Path) -> tuple[set[str], str]:
    """The modules `mlops-iac ARGS...` imported, and what it printed."""
    out = tmp_path / "modules.json"
    done = subprocess.run(
        [sys.executable, "-c", PROBE, str(out), *args],
        cwd=cwd,
        env={**installed_env(), "COLUMNS": "80"},
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    return set(json.loads(out.read_text())), done.stdout


def loaded(modules: set[str], names: tuple[str, ...]) -> set[str]:
    return {n for n in names if n in modules or any(m.startswith(f"{n}.") for m in modules)}


def test_help_loads_no_command_module_and_nothing_heavy(tmp_path: Path) -> None:
    modules, _ = imported(["--help"], tmp_path, tmp_path)
    assert loaded(modules, HEAVY) == set()
    assert {m for m in modules if m.startswith("mlops_iac.cli_")} == set()


def test_validate_loads_only_what_checking_a_file_needs(tmp_path: Path) -> None:
    shutil.copyfile(QUICKSTART / "mlops.yaml", tmp_path / "mlops.yaml")
    modules, out = imported(["validate"], tmp_path, tmp_path)
    assert "valid (1 model(s)" in out
    assert loaded(modules, NOT_FOR_VALIDATE) == set()
    assert "mlops_iac.resolve" in modules  # it did check the file, through the one loader


def command_paths(group: click.Group, prefix: tuple[str, ...] = ()) -> list[tuple[str, ...]]:
    """Every command as typed, sub-commands of a lazily listed group included."""
    ctx = click.Context(group)
    paths = []
    for name in group.list_commands(ctx):
        command = group.get_command(ctx, name)
        assert command is not None, name
        paths.append((*prefix, name))
        if isinstance(command, click.Group):
            paths += command_paths(command, (*prefix, name))
    return paths


def defined_commands() -> set[tuple[str, str]]:
    """(module, attribute) of every command a `cli_*` module defines at its top, not counting
    the sub-commands of its own groups: what the lazy tables must name."""
    found = set()
    for info in pkgutil.iter_modules(mlops_iac.__path__):
        if not info.name.startswith("cli_"):
            continue
        module = importlib.import_module(f"mlops_iac.{info.name}")
        commands = {k: v for k, v in vars(module).items() if isinstance(v, click.Command)}
        nested = {id(c) for g in commands.values() if isinstance(g, click.Group) for c in g.commands.values()}
        found |= {(info.name, k) for k, v in commands.items() if id(v) not in nested}
    return found


def test_the_tables_name_every_command_of_the_command_modules() -> None:
    tables = {(e.module, e.command) for e in (*COMMANDS.values(), *LOCK_COMMANDS.values())}
    assert tables == defined_commands()


@pytest.mark.parametrize(("name", "entry"), [*COMMANDS.items(), *LOCK_COMMANDS.items()])
def test_a_listed_short_help_is_the_commands_own(name: str, entry: Lazy) -> None:
    command = getattr(importlib.import_module(f"mlops_iac.{entry.module}"), entry.command)
    assert (command.name, command.get_short_help_str(10**6)) == (name, entry.short_help)


def test_help_lists_what_the_loaded_commands_say(tmp_path: Path) -> None:
    """`--help` from the tables prints what click prints once every command is loaded."""
    _, listed = imported(["--help"], tmp_path, tmp_path)
    _, lock_listed = imported(["lock", "--help"], tmp_path, tmp_path)
    command_paths(main)  # loads every command
    assert isinstance(main, LazyGroup) and set(main.lazy) <= set(main.commands)
    runner = CliRunner()  # which forces a width of its own: WIDTH is the subprocess's
    assert listed == runner.invoke(main, ["--help"], prog_name="mlops-iac", terminal_width=WIDTH).output
    assert lock_listed == runner.invoke(main, ["lock", "--help"], prog_name="mlops-iac", terminal_width=WIDTH).output
    shown = {line.split()[0] for line in listed.split("Commands:\n", 1)[1].splitlines() if line.strip()}
    assert shown == {p[0] for p in command_paths(main)}


def test_every_command_answers_help() -> None:
    paths = command_paths(main)
    assert set(paths) >= {(n,) for n in COMMANDS} | {("lock", n) for n in LOCK_COMMANDS}
    for path in paths:
        result = CliRunner().invoke(main, [*path, "--help"])
        assert result.exit_code == 0 and result.output.startswith("Usage: "), (path, result.output)


@pytest.mark.parametrize(
    ("name", "valid"),
    [
        ("a" * 90, True),
        ("rg.ré-(1)_x", True),
        ("é", True),
        ("a" * 91, False),
        ("rg.", False),
        ("", False),
        ("a b", False),
    ],
)
def test_a_resource_group_name_is_azures_rule(name: str, valid: bool) -> None:
    """Azure's rule (1 to 90 of letters, digits, `-._()`, not ending in `.`) as a length and a
    pattern without a counted repetition, which is slow to compile on every start."""
    from pydantic import ValidationError

    from mlops_iac.spec.azure import ContainerAppsTarget, ContainerInstancesTarget

    for target, extra in (
        (ContainerInstancesTarget, {"kind": "azure-container-instances"}),
        (
            ContainerAppsTarget,
            {
                "kind": "azure-container-apps",
                "environment": "/subscriptions/s/resourceGroups/g/providers/Microsoft.App/managedEnvironments/e",
            },
        ),
    ):
        data = {**extra, "resourceGroup": name, "location": "westeurope"}
        if valid:
            assert target.model_validate(data).resource_group == name
        else:
            with pytest.raises(ValidationError):
                target.model_validate(data)
