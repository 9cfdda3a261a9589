"""The commands that live in `cli_*` modules, by name, and the click group that imports one
only when it is asked for: `mlops-iac --help` lists them all and loads none of their modules.

In the CLI layer but not a command: `cli.py` builds its groups with this; it imports no
command module itself (the group imports one by name when it runs).
"""

from __future__ import annotations

import importlib
from collections.abc import Mapping
from typing import Any, NamedTuple

import click


class Lazy(NamedTuple):
    """A command of a `cli_*` module, and its short help as `--help` lists it."""

    module: str
    command: str
    short_help: str


# `--help` lists these from here, and a command's module (numpy, onnx, pyarrow, uvicorn...) loads
# only when it runs; tests/test_startup.py checks each short help against the command's own.
COMMANDS: dict[str, Lazy] = {
    "build": Lazy(
        "cli_build",
        "build",
        "Write the deterministic, hermetic build context of a model version (Dockerfile, ONNX model, server, "
        "wheels with hashes, settings from the lock), and optionally build and push it.",
    ),
    "convert": Lazy(
        "cli_convert",
        "convert",
        "Convert a registered version to ONNX, prove parity, validate, measure the speed-up.",
    ),
    "models": Lazy(
        "cli_registry",
        "models",
        "List, inspect, tag, alias, pull, delete, export and import model versions.",
    ),
    "monitor": Lazy(
        "cli_monitor",
        "monitor",
        "Watch deployed versions: drift of the collected data against the baseline.",
    ),
    "profile": Lazy(
        "cli_profile",
        "profile",
        "Measure latency, throughput and memory of a converted version, in process and through the real server "
        "over HTTP, and recommend CPU, memory, threads, batching and replicas.",
    ),
    "register": Lazy(
        "cli_registry",
        "register",
        "Store an artifact as the next version of MODEL and print MODEL@N and its digest.",
    ),
    "render": Lazy(
        "cli_render",
        "render_manifests",
        "The Kubernetes objects of a target as plain manifests (for GitOps and offline checks): the same "
        "objects `pulumi up` creates.",
    ),
    "rollout": Lazy(
        "cli_rollout",
        "rollout",
        "Carry a canary through its rollout policy: judge, advance, promote or roll back.",
    ),
    "score": Lazy(
        "cli_score",
        "score_command",
        "Score whole datasets with a registered model version (its ONNX file, its handler).",
    ),
    "serve": Lazy(
        "cli_serve",
        "serve",
        "Serve models over the Open Inference Protocol v2 (KServe/Triton REST) on onnxruntime.",
    ),
    "shadow": Lazy("cli_shadow", "shadow", "Shadow traffic: what a mirrored version would have answered."),
    "smoke": Lazy(
        "cli_smoke",
        "smoke",
        "Send the model's sample to a deployed endpoint and check the answers against the pinned ONNX model, "
        "within the parity tolerances recorded in mlops.lock.",
    ),
}
LOCK_COMMANDS: dict[str, Lazy] = {
    "pending": Lazy(
        "cli_registry",
        "lock_pending",
        "Print, one per line, the deployed versions (MODEL@N) whose lock entry lacks a stage's facts: what a "
        "workflow still has to convert, profile or build.",
    ),
    "sync": Lazy(
        "cli_registry",
        "lock_sync",
        "Make mlops.lock pin exactly what mlops.yaml's deployments name, from the registry.",
    ),
}


class LazyGroup(click.Group):
    """A group whose commands of other modules are imported when they are asked for (click's
    documented lazy-loading pattern), not to list them in `--help`."""

    def __init__(self, *args: Any, lazy: Mapping[str, Lazy] | None = None, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.lazy = dict(lazy or {})

    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted({*self.commands, *self.lazy})

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        if cmd_name in self.lazy and cmd_name not in self.commands:
            entry = self.lazy[cmd_name]
            module = importlib.import_module(f".{entry.module}", __package__)
            self.add_command(getattr(module, entry.command), cmd_name)
        return super().get_command(ctx, cmd_name)

    def format_commands(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        """click's listing, with a command not loaded yet shown by its short help from the table."""
        listed = [
            (name, self.commands.get(name) or click.Command(name, help=self.lazy[name].short_help))
            for name in self.list_commands(ctx)
        ]
        rows = [(name, cmd) for name, cmd in listed if not cmd.hidden]
        if rows:
            limit = formatter.width - 6 - max(len(name) for name, _ in rows)
            with formatter.section("Commands"):
                formatter.write_dl([(name, cmd.get_short_help_str(limit)) for name, cmd in rows])
