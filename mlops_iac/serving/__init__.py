"""The model server: Open Inference Protocol v2 over REST and gRPC on onnxruntime."""

from typing import Any

from .config import CollectionConfig, ModelConfig, ServerConfig

__all__ = ["CollectionConfig", "ModelConfig", "Server", "ServerConfig"]


def __getattr__(name: str) -> Any:
    # The app (Starlette, the protocol, metrics) loads only when asked for: batch scoring's
    # worker processes import the runtime and the settings, and start faster without it.
    if name == "Server":
        from .app import Server

        return Server
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
