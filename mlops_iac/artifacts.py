"""Leaf types every layer that makes files shares: a file to write and canonical JSON.

Here rather than in `plan.py` so that the build context (`images/`) and the Kubernetes objects
make files without depending on the planner.
"""

from __future__ import annotations

import json
from typing import Any

from pydantic import BaseModel, ConfigDict


class FileArtifact(BaseModel):
    model_config = ConfigDict(frozen=True)
    path: str  # relative, POSIX separators
    content: str | bytes  # text (diffed in a dry run) or binary (an ONNX model, a wheel)
    mode: int = 0o644
    # Written only when missing and never removed: a file the user (or Pulumi) owns after.
    create_only: bool = False

    @property
    def data(self) -> bytes:
        return self.content if isinstance(self.content, bytes) else self.content.encode("utf-8")


def canonical_json(data: Any) -> str:
    """JSON that is byte-identical for equal data: sorted keys, fixed separators, newline."""
    return json.dumps(data, sort_keys=True, indent=2, ensure_ascii=False) + "\n"
