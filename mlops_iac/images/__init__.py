"""One deterministic, hermetic Docker build context per model version.

`context_files` is pure: the same inputs (lock facts, ONNX bytes, wheels) give the same
files, byte for byte; `context_digest` names them, and that name is the image tag, so a tag
never moves. The Dockerfile comes from templates/docker/, the variant chosen by a table.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from datetime import UTC, datetime

from ..artifacts import FileArtifact, canonical_json
from ..contract import PORT, PORT_ENV, UID
from ..render import render
from ..serving.config import ModelConfig, ServerConfig
from .wheels import Wheel, requirements_txt

# The default base images, pinned by digest: a tag can move, a digest cannot.
PYTHON_BASE = "python:3.11-slim-bookworm@sha256:2e32f7d302adc1c37428355c1e646897c0c53f4fd60b6a551245fb90ee129f91"
CUDA_BASE = (
    "nvidia/cuda:12.6.3-cudnn-runtime-ubuntu24.04@sha256:"
    "8aef630a54bc5c5146ae5ce68e6af5caa3df0fb690bb91544175c91f307e4356"
)
VARIANTS = {  # variant -> (template, default base image)
    "onnx_cpu": ("docker/onnx_cpu.Dockerfile.j2", PYTHON_BASE),
    "onnx_cuda": ("docker/onnx_cuda.Dockerfile.j2", CUDA_BASE),
}
EXECUTABLE = 0o755
MODEL_PATH = "/app/model/model.onnx"


@dataclass(frozen=True)
class ContextInputs:
    model: str
    version: int
    model_digest: str
    onnx: bytes
    onnx_digest: str
    created: str  # when the version was registered: the image's creation time, reproducibly
    platform: str
    gpu: bool = False
    base_image: str | None = None
    python: str = "python3"
    extra_steps: str | None = None
    revision: str | None = None
    description: str = ""
    handler: bytes | None = None
    threads: int = 1
    max_batch_size: int = 1
    max_delay_ms: float = 0.0
    wheels: tuple[Wheel, ...] = ()
    sources: dict[str, bytes] = field(default_factory=dict)  # the server's code, by relative path


def variant(gpu: bool) -> str:
    return "onnx_cuda" if gpu else "onnx_cpu"


def context_files(inputs: ContextInputs) -> list[FileArtifact]:
    """Every file of the context, in a stable order."""
    name = variant(inputs.gpu)
    template, default_base = VARIANTS[name]
    created = datetime.fromisoformat(inputs.created.replace("Z", "+00:00")).astimezone(UTC)
    dockerfile = render(
        template,
        model=inputs.model,
        version=inputs.version,
        model_digest=inputs.model_digest,
        onnx_digest=inputs.onnx_digest,
        base_image=inputs.base_image or default_base,
        python_image=PYTHON_BASE,
        python=inputs.python,
        variant=name,
        epoch=int(created.timestamp()),
        created=created.strftime("%Y-%m-%dT%H:%M:%SZ"),
        revision=inputs.revision or "",
        description=inputs.description
        or f"{inputs.model} version {inputs.version}, served over the v2 protocol on onnxruntime",
        extra_steps=(inputs.extra_steps or "").strip(),
        port=PORT,
        port_env=PORT_ENV,
        uid=UID,
    )
    server = ServerConfig(
        deployment=f"{inputs.model}-{inputs.version}",
        models=(
            ModelConfig(
                name=inputs.model,
                version=inputs.version,
                path=MODEL_PATH,
                digest=inputs.onnx_digest,
                threads=inputs.threads,
                max_batch_size=inputs.max_batch_size,
                max_delay_ms=inputs.max_delay_ms,
                handler="/app/model/handler.py" if inputs.handler is not None else None,
                gpu=inputs.gpu,
            ),
        ),
    )
    files = [
        FileArtifact(path="Dockerfile", content=dockerfile),
        FileArtifact(path=".dockerignore", content=render("docker/dockerignore.j2")),
        FileArtifact(path="server.json", content=canonical_json(server.model_dump(mode="json"))),
        FileArtifact(path="model/model.onnx", content=inputs.onnx),
        FileArtifact(path="wheels/requirements.txt", content=requirements_txt(list(inputs.wheels))),
    ]
    if inputs.handler is not None:
        files.append(FileArtifact(path="model/handler.py", content=inputs.handler))
    files += [FileArtifact(path=f"wheels/{w.filename}", content=w.data) for w in inputs.wheels]
    files += [FileArtifact(path=f"src/{path}", content=data) for path, data in sorted(inputs.sources.items())]
    return sorted(files, key=lambda f: f.path)


def context_digest(files: list[FileArtifact]) -> str:
    """sha256 over every file's path, mode and content digest: the context's name."""
    lines = []
    for f in sorted(files, key=lambda f: f.path):
        data = f.content if isinstance(f.content, bytes) else f.content.encode("utf-8")
        lines.append(f"{f.path}\0{f.mode:o}\0{hashlib.sha256(data).hexdigest()}\n")
    return "sha256:" + hashlib.sha256("".join(lines).encode()).hexdigest()


def image_tag(digest: str) -> str:
    """The image tag of a context: its digest, so a tag names one content forever."""
    return "ctx-" + digest.removeprefix("sha256:")
