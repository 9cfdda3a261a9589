"""What `register` decides and checks before it stores a file: the framework, and for ONNX
that the file is a model onnxruntime runs on the sample.

ONNX is checked whenever anything calls the file ONNX (its suffix, --framework, or the model's
framework in mlops.yaml when no flag is given): reading ONNX runs no code. Pickles and torch
files run code when loaded, so they are only loaded by `convert`, which names what is wrong.
"""

from __future__ import annotations

from pathlib import Path
from typing import cast, get_args

from ..errors import RegistryError
from ..resolve import Workspace
from ..spec.models import Framework
from . import features, model_spec

FRAMEWORKS: tuple[str, ...] = get_args(Framework)  # the spec's type is the one list
BY_SUFFIX: dict[str, Framework] = {
    ".onnx": "onnx",
    ".pt": "pytorch",
    ".pth": "pytorch",
    ".joblib": "sklearn",
    ".pkl": "sklearn",
    ".pickle": "sklearn",
    ".skops": "sklearn",
}


def framework_of(model: str, file: Path, given: str | None, ws: Workspace | None) -> tuple[Framework, str]:
    """The framework to register `file` as, and what said so (for messages).

    The flag wins, then a `.onnx` suffix (the README promises it is enough), then mlops.yaml,
    then any other suffix.
    """
    suffix = file.suffix.lower()
    declared = next((m.framework for m in ws.spec.models if m.name == model), None) if ws else None
    if given:  # click checked it against FRAMEWORKS
        return cast(Framework, given), "--framework"
    if suffix == ".onnx":
        return "onnx", "its .onnx suffix"
    if declared:
        return declared, f"model {model!r} in {ws.file.name if ws else 'mlops.yaml'}"
    if suffix in BY_SUFFIX:
        return BY_SUFFIX[suffix], f"its {suffix} suffix"
    raise RegistryError(f"cannot tell the framework of {file.name}; pass --framework ({', '.join(FRAMEWORKS)})")


def checked_framework(model: str, file: Path, given: str | None, ws: Workspace | None) -> Framework:
    """The framework of `file`, after refusing a file called ONNX that is not a model
    onnxruntime runs on the sample `convert` will use."""
    from ..convert.onnx_checks import try_on_sample, verify_onnx

    chosen, why = framework_of(model, file, given, ws)
    if chosen != "onnx" and file.suffix.lower() == ".onnx":
        verify_onnx(file, "its .onnx suffix")
        raise RegistryError(f"{file.name} is an ONNX model, but {why} says {chosen}; register it with --framework onnx")
    if chosen == "onnx":
        verify_onnx(file, why)
        spec = model_spec(ws, model)
        rows = features(None, spec, ws, "onnx", file, lambda _: None)
        sample = spec.sample if spec is not None and spec.sample else "rows made from its signature"
        try_on_sample(file, rows, sample)
    return chosen
