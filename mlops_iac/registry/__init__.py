"""The model registry: immutable, content-addressed, auto-numbered versions.

`open_registry` picks the backend from the spec's `registry:` section: a local folder by default, an OCI
registry for teams. Both run the same rules (`core.Registry`) over a `Store`.
"""

from __future__ import annotations

import os
from pathlib import Path

from ..errors import RegistryError
from ..spec.registry import LocalRegistry, OciRegistry
from .core import Registry
from .local import LocalStore
from .records import Artifact, Event, ModelIndex, Version
from .refs import Ref, parse_ref


def open_registry(config: LocalRegistry | OciRegistry, root: Path) -> Registry:
    """The registry `mlops.yaml` configures (its `registry:` section), relative to `root`."""
    if isinstance(config, OciRegistry):
        from .oci import OciStore

        store = OciStore(
            config.repository,
            insecure=config.insecure,
            env=os.environ,
            timeout=config.timeout,
            retries=config.retries,
        )
        return Registry(store)
    folder = root / config.path
    if folder.exists() and not folder.is_dir():  # else every command fails deep in the store on "Not a directory"
        raise RegistryError(
            f"{folder}: registry.path names a file; the local registry is a folder (one that exists or not yet)"
        )
    return Registry(LocalStore(folder))


__all__ = ["Artifact", "Event", "LocalStore", "ModelIndex", "Ref", "Registry", "Version", "open_registry", "parse_ref"]
