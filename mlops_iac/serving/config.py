"""The server's settings: which ONNX files to serve and how. Written into every build
context from the lock (`server.json`) and made by `mlops-iac serve` for the local target."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, SerializerFunctionWrapHandler, model_serializer

# Re-exported: the commands and objects that set these read them from here too.
from ..contract import API_KEY_ENV as API_KEY_ENV
from ..contract import SETTINGS_ENV as SETTINGS_ENV

DEFAULT_MAX_BODY = 64 * 2**20
DEFAULT_HEADER_TIMEOUT = 10.0
DEFAULT_BODY_TIMEOUT = 30.0


class Settings(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class ModelConfig(Settings):
    name: str
    version: int = Field(ge=1)
    path: str = Field(description="The ONNX file, relative to the settings file.")
    digest: str | None = Field(None, description="Checked before loading; a mismatch refuses to start.")
    weight: int = Field(100, ge=0, le=100, description="Share of unversioned requests (percent).")
    threads: int = Field(1, ge=1, le=256)
    max_batch_size: int = Field(1, ge=1, le=65536)
    max_delay_ms: float = Field(0.0, ge=0, le=10_000)
    handler: str | None = None
    gpu: bool = False
    shadow: int = Field(
        0,
        ge=0,
        le=100,
        description="Percent of this model's answered requests mirrored to "
        "this version afterwards (its answers are only recorded).",
    )

    @model_serializer(mode="wrap")
    def _without_no_shadow(self, handler: SerializerFunctionWrapHandler) -> dict[str, Any]:
        # Written only when set: the settings (and so the build contexts' digests) of servers
        # without a shadow stay byte-identical.
        data: dict[str, Any] = handler(self)
        if not self.shadow:
            data.pop("shadow", None)
        return data


class MirrorConfig(Settings):
    """A shadow version served by another server (on a Docker host, its own container): this
    server sends it `percent` of the model's answered requests over HTTP, after the answer."""

    model: str
    version: int = Field(ge=1)
    percent: int = Field(ge=1, le=100)
    url: str = Field(
        pattern=r"^http://[^/\s]+(/\S*)?$",
        description="The shadow server's base URL, e.g. http://iris-v2-8e247c07:8080.",
    )


class CollectionConfig(Settings):
    enabled: bool = False
    sample_rate: float = Field(0.0, ge=0, le=1)
    sink: Literal["file", "stdout", "http"] = "stdout"
    path: str = "collected/requests.jsonl"
    max_bytes: int = Field(100 * 2**20, ge=1024)
    backups: int = Field(5, ge=0)
    url: str | None = None
    queue_size: int = Field(10_000, ge=1)


class ServerConfig(Settings):
    deployment: str = "local"
    models: tuple[ModelConfig, ...] = Field(min_length=1)
    auth: bool = False
    api_key_env: str = API_KEY_ENV
    max_body_bytes: int = Field(DEFAULT_MAX_BODY, ge=1024)
    metrics: bool = True
    metrics_port: int | None = Field(None, ge=1, le=65535)
    grpc_port: int | None = Field(None, ge=1, le=65535)
    collection: CollectionConfig = CollectionConfig()
    mirrors: tuple[MirrorConfig, ...] = Field(
        (), description="Shadow versions served elsewhere, mirrored to over HTTP after the answer."
    )
    workers: int = Field(
        1,
        ge=0,
        le=256,
        description="Server processes (0: one per CPU); never more "
        "than the CPUs the container may use (its CPU quota). REST on every one, gRPC on the first.",
    )
    header_timeout_s: float = Field(
        DEFAULT_HEADER_TIMEOUT,
        gt=0,
        le=3600,
        description="Seconds a connection has to send a whole request head, from its opening or the "
        "end of its previous answer; then it is closed (408 when part of a head came).",
    )
    body_timeout_s: float = Field(
        DEFAULT_BODY_TIMEOUT,
        gt=0,
        le=3600,
        description="Seconds a request body may go without a byte before its connection is closed (408).",
    )
    max_connections: int | None = Field(
        None,
        ge=1,
        le=1_000_000,
        description="Open REST connections per worker; one more is answered 503 and closed at once. "
        "Default: the open-file limit less a reserve for everything else (serving/guard.py).",
    )

    @model_serializer(mode="wrap")
    def _leave_out_the_defaults(self, handler: SerializerFunctionWrapHandler) -> dict[str, Any]:
        # One worker is written as before there were workers: the settings of every deployment
        # stay byte for byte what they were, and so do the digests pinned from them.
        data: dict[str, Any] = handler(self)
        if data.get("workers") == 1:
            del data["workers"]
        if not data.get("mirrors"):  # likewise without a shadow served elsewhere
            data.pop("mirrors", None)
        for name, default in _UNWRITTEN_DEFAULTS:  # and with the connection limits as they come
            if data.get(name, default) == default:
                data.pop(name, None)
        return data


_UNWRITTEN_DEFAULTS = (
    ("header_timeout_s", DEFAULT_HEADER_TIMEOUT),
    ("body_timeout_s", DEFAULT_BODY_TIMEOUT),
    ("max_connections", None),
)


def workers_for(cpu_millis: int, threads: int, collection: CollectionConfig) -> int:
    """The worker processes the recommended CPU (the lock's profile, or the spec's) pays for:
    one per whole core of the request, each worker's onnxruntime taking `threads` of them.

    On small models the HTTP stack is the cost and one process serves on one core, so a
    replica given N cores needs N processes to use them; at run time the count is capped
    again by the container's CPU quota (`workers.worker_count`). A collection file keeps one
    worker by default (one file, as `monitor drift` is shown reading it); asked for more, each
    worker writes a file of its own (`workers.own_collection_file`).
    """
    if collection.enabled and collection.sink == "file":
        return 1
    return max(1, cpu_millis // (1000 * max(1, threads)))


def read_config(path: Path) -> ServerConfig:
    return ServerConfig.model_validate_json(path.read_bytes())
