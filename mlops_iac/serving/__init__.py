"""The model server: Open Inference Protocol v2 over REST and gRPC on onnxruntime."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .app import Server
    from .config import CollectionConfig, ModelConfig, ServerConfig

__all__ = ["CollectionConfig", "ModelConfig", "Server", "ServerConfig"]


def __getattr__(name: str) -> Any:
    # Imported when first used: `python -m mlops_iac.serving.health`, the image's HEALTHCHECK, goes
    # through this package, and importing the server (numpy, onnxruntime, pydantic) takes seconds
    # under a container's CPU limit on a busy host: past the check's 3 s timeout. Batch scoring's
    # worker processes, which need the runtime and the settings but not the app, start faster too.
    if name == "Server":
        from .app import Server

        return Server
    if name in __all__:
        from . import config

        return getattr(config, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
