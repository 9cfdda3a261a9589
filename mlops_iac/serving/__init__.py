"""The model server: Open Inference Protocol v2 over REST and gRPC on onnxruntime."""

from .app import Server
from .config import CollectionConfig, ModelConfig, ServerConfig

__all__ = ["CollectionConfig", "ModelConfig", "Server", "ServerConfig"]
