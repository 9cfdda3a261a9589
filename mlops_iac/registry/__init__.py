"""The model registry: immutable, content-addressed, auto-numbered versions.

`open_registry` picks the backend from the resolved spec: a local folder by default, an OCI
registry for teams. Both run the same rules (`core.Registry`) over a `Store`.
"""

from __future__ import annotations

import os
from pathlib import Path

from ..resolve import ResolvedRegistry
from .core import Registry
from .local import LocalStore
from .records import Artifact, Event, ModelIndex, Version
from .refs import Ref, parse_ref


def open_registry(config: ResolvedRegistry, root: Path) -> Registry:
    if config.backend == "oci":
        from .oci import OciStore

        assert config.repository is not None
        return Registry(OciStore(config.repository, insecure=config.insecure, env=os.environ))
    return Registry(LocalStore(root / (config.path or ".mlops/registry")))


__all__ = ["Artifact", "Event", "LocalStore", "ModelIndex", "Ref", "Registry", "Version",
           "open_registry", "parse_ref"]
