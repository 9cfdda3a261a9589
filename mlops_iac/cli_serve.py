"""`mlops-iac serve`: the local target, on the same server every image runs."""

from __future__ import annotations

from pathlib import Path

import click

from .artifacts import canonical_json
from .console import prepare_onnx
from .console import registry_file_option as file_option
from .contract import PORT
from .errors import MlopsIacError
from .pinned import pin_all
from .plan import server_config
from .registry import Registry, parse_ref
from .resolve import ResolvedDeployment, Workspace
from .serving.config import ModelConfig, ServerConfig
from .spec.targets import LocalTarget
from .workspace import cached_onnx, onnx_artifact, project_registry


@click.command()
@click.argument("refs", nargs=-1, metavar="[MODEL@N]...")
@file_option
@click.option(
    "--deployment",
    "deployments",
    multiple=True,
    help="Serve this deployment of mlops.yaml (repeatable; default: every local one).",
)
@click.option("--host", default=None, help="Default: the target's host (127.0.0.1).")
@click.option(
    "--port",
    type=click.IntRange(0, 65535),
    default=None,
    help=f"Default: the target's port ({PORT}); 0 picks a free port (printed).",
)
@click.option(
    "--grpc-port",
    type=click.IntRange(1, 65535),
    default=None,
    help="Also serve the v2 gRPC protocol on this port (default: REST only).",
)
@click.option(
    "--workers",
    type=click.IntRange(0, 256),
    default=None,
    help="Server processes (0: one per CPU; default: what the deployment's recommended CPU pays "
    "for, else 1); never more than the CPUs this machine or container allows.",
)
@click.option(
    "--header-timeout",
    type=click.FloatRange(0, 3600, min_open=True),
    default=None,
    help="Seconds a connection has to send a whole request head (default 10).",
)
@click.option(
    "--body-timeout",
    type=click.FloatRange(0, 3600, min_open=True),
    default=None,
    help="Seconds a request body may stall before its connection is closed (default 30).",
)
@click.option(
    "--max-connections",
    type=click.IntRange(1, 1_000_000),
    default=None,
    help="Open REST connections per worker; more get a 503 (default: the open-file limit less 256).",
)
@click.option(
    "--write-config",
    type=click.Path(dir_okay=False, path_type=Path),
    default=None,
    help="Only write the server settings (JSON) here and exit.",
)
def serve(
    refs: tuple[str, ...],
    file: Path,
    deployments: tuple[str, ...],
    host: str | None,
    port: int | None,
    grpc_port: int | None,
    workers: int | None,
    header_timeout: float | None,
    body_timeout: float | None,
    max_connections: int | None,
    write_config: Path | None,
) -> None:
    """Serve models over the Open Inference Protocol v2 (KServe/Triton REST) on onnxruntime.

    With MODEL@N references, serve those registered versions (their ONNX artifacts) as they
    are; otherwise serve the deployments of mlops.yaml as pinned in mlops.lock.
    """
    registry, ws = project_registry(file)
    root = ws.root if ws else Path.cwd()
    if refs:
        config, target = _adhoc(registry, root, refs), None
    else:
        if ws is None:
            raise MlopsIacError(f"{file} not found; pass MODEL@N references or -f FILE")
        if _prepare_pinned_onnx(registry, ws, deployments):
            registry, ws = project_registry(file)
            assert ws is not None
        config, target = _from_deployments(registry, ws, deployments)
    if grpc_port is not None:
        config = config.model_copy(update={"grpc_port": grpc_port})
    overrides = {
        "workers": workers,
        "header_timeout_s": header_timeout,
        "body_timeout_s": body_timeout,
        "max_connections": max_connections,
    }
    config = config.model_copy(update={k: v for k, v in overrides.items() if v is not None})
    if write_config is not None:
        write_config.write_text(canonical_json(config.model_dump(mode="json")))
        click.echo(f"wrote {write_config}")
        return
    host = host or (target.host if target else "127.0.0.1")
    port = port if port is not None else (target.port if target else PORT)
    from .serving.run import bind
    from .serving.run import serve as run_server
    from .serving.workers import worker_count

    count = worker_count(config.workers)
    # Bound before the announcement: a busy port is an error, not a lie. With workers, each
    # after the first binds its own socket on the port (SO_REUSEPORT: connections spread evenly).
    sock = bind(host, port, reuse_port=count > 1)
    port = sock.getsockname()[1]
    names = ", ".join(f"{m.name}@{m.version}" for m in config.models)
    grpc = f"; gRPC on {host}:{grpc_port}" if grpc_port is not None else ""
    processes = f"; {count} worker processes" if count > 1 else ""
    click.echo(f"serving {names} on http://{host}:{port} (v2 protocol; /metrics{grpc}{processes}; Ctrl-C stops)")
    try:
        run_server(config, root, host, port, sock=sock)
    finally:
        sock.close()


def _from_deployments(
    registry: Registry, ws: Workspace, names: tuple[str, ...]
) -> tuple[ServerConfig, LocalTarget | None]:
    chosen = _choose(ws, names)
    dep = chosen[0]
    paths = {}
    for v in dep.versions:
        facts = ws.lock.version(dep.model, v.number) if v.number is not None else None
        if facts is None or facts.onnx is None or v.number is None:
            raise MlopsIacError(
                f"{dep.model}@{v.ref} has no ONNX conversion in mlops.lock; run "
                f"`mlops-iac convert {dep.model}@{v.ref}` first"
            )
        paths[v.number] = cached_onnx(registry, ws.root, dep.model, v.number, facts.onnx.digest)
    handler = ws.resolved.model(dep.model).handler
    (pinned,) = pin_all((dep,))  # every version is in the lock (checked above)
    config = server_config(pinned, ws.lock, paths, handler)
    for other in chosen[1:]:  # several deployments share one server: add their models
        extra = _from_deployments(registry, ws, (other.name,))[0]
        config = config.model_copy(update={"models": (*config.models, *extra.models)})
    spec = ws.resolved.target(dep.target).spec
    return config, spec if isinstance(spec, LocalTarget) else None


def _prepare_pinned_onnx(registry: Registry, ws: Workspace, names: tuple[str, ...]) -> bool:
    """ONNX versions pinned without their checks (e.g. by `lock sync`): prepare them now, as
    `register` would have (no native code runs). True when the lock changed."""
    changed = False
    for dep in _choose(ws, names):
        for v in dep.versions:
            facts = ws.lock.version(dep.model, v.number) if v.number is not None else None
            if facts is None or facts.onnx is not None or facts.framework != "onnx":
                continue
            prepare_onnx(registry, ws.file, registry.resolve(parse_ref(f"{dep.model}@{v.number}")))
            changed = True
    return changed


def _choose(ws: Workspace, names: tuple[str, ...]) -> list[ResolvedDeployment]:
    known = {d.name: d for d in ws.resolved.deployments}
    if names:
        unknown = [n for n in names if n not in known]
        if unknown:
            raise MlopsIacError(f"unknown deployment(s) {', '.join(unknown)}; deployments: " + ", ".join(known))
        return [known[n] for n in names]
    local = [d for d in ws.resolved.deployments if isinstance(ws.resolved.target(d.target).spec, LocalTarget)]
    if not local:
        raise MlopsIacError("no deployment on a local target; name one with --deployment")
    return local


def _adhoc(registry: Registry, root: Path, refs: tuple[str, ...]) -> ServerConfig:
    models = []
    for text in refs:
        version = registry.resolve(parse_ref(text))
        if "onnx" not in version.artifacts and version.framework == "onnx":
            prepare_onnx(registry, None, version)
            version = registry.resolve(parse_ref(f"{version.model}@{version.version}"))
        onnx = onnx_artifact(version)
        path = cached_onnx(registry, root, version.model, version.version, onnx.digest)
        models.append(ModelConfig(name=version.model, version=version.version, path=path, digest=onnx.digest))
    return ServerConfig(deployment="adhoc", models=tuple(models))
