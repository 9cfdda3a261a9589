"""Why an artifact failed to load or convert, said in one line that a user can act on.

joblib, torch, skl2onnx and onnxruntime fail with their own exceptions (`KeyError: 13`,
`pop from empty list`, a multi-line `[ONNXRuntimeError]`), which name neither the file nor what
was expected of it. Each step of a conversion runs under `loading` or `step`, which turn them
into a `ConversionError` naming the file, the framework it was registered as and what to check.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from ..errors import MlopsIacError

# How each framework's artifact is loaded, and what writes one that loads.
LOADERS = {
    "sklearn": ("joblib.load", "joblib.dump(estimator, PATH) after fit()"),
    "lightgbm": ("joblib.load", "joblib.dump(LGBMClassifier or LGBMRegressor, PATH) after fit()"),
    "xgboost": ("joblib.load", "joblib.dump(XGBClassifier or XGBRegressor, PATH) after fit()"),
    "pytorch": (
        "torch.jit.load or torch.load",
        "torch.jit.save(torch.jit.script(model), PATH) or torch.save(model, PATH)",
    ),
    "onnx": ("onnx.load", "onnx.save(model, PATH)"),
}
SAMPLE_HINT = "check that the sample's columns, their order and types are the model's inputs"
_LONGEST = 300  # a library's message beyond this is noise in a one-line error
_ZIP = b"PK\x03\x04"  # torch.save and torch.jit.save write zip archives


class ConversionError(MlopsIacError):
    """The artifact could not be loaded or converted."""


def one_line(exc: BaseException) -> str:
    """An exception as `Type: message` on one bounded line (libraries' messages span lines)."""
    text = " ".join(str(exc).split())
    if len(text) > _LONGEST:
        text = text[: _LONGEST - 3] + "..."
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


@contextmanager
def loading(framework: str, path: Path) -> Iterator[None]:
    """Loading a native artifact: any failure says what the file was expected to be."""
    try:
        yield
    except MlopsIacError:
        raise
    except Exception as exc:
        raise ConversionError(load_failure(framework, path, exc)) from exc


@contextmanager
def step(what: str, path: Path, hint: str = "") -> Iterator[None]:
    """A step after loading (converting, optimising, running on the sample), named when it fails."""
    try:
        yield
    except MlopsIacError:
        raise
    except Exception as exc:
        raise ConversionError(f"{path.name}: {what} failed ({one_line(exc)})" + (f"; {hint}" if hint else "")) from exc


def load_failure(framework: str, path: Path, exc: Exception) -> str:
    loader, saver = LOADERS.get(framework, ("its loader", "the library that trained it"))
    if isinstance(exc, ModuleNotFoundError):
        check = (
            f"it needs the module {exc.name!r}: install the package that defines the model's classes, "
            "as where it was trained"
        )
    else:
        check = _what_it_is(path, framework) or (
            f"check that it is the whole file written by {saver} (not truncated, not another format)"
        )
    return f"{path.name} is not a {framework} model that {loader} can load ({one_line(exc)}); {check}"


def _what_it_is(path: Path, framework: str) -> str | None:
    """What the file looks like instead, read without running any of it."""
    with open(path, "rb") as handle:
        head = handle.read(64)
    if not head:
        return "the file is empty: save the model again"
    if framework != "onnx" and is_onnx(path):
        return "it is an ONNX model: register it with --framework onnx"
    if framework != "pytorch" and head.startswith(_ZIP):
        return "it is a zip archive, as torch.save and torch.jit.save write: register it with --framework pytorch"
    if framework in ("lightgbm", "xgboost") and head.lstrip()[:1] in (b"{", b"t"):
        return (
            "it looks like the booster's own save_model format; mlops-iac converts the scikit-learn "
            f"API model, saved with {LOADERS[framework][1]}"
        )
    return None


def is_onnx(path: Path) -> bool:
    """Whether the file is a valid ONNX model (protobuf parses some other bytes too: check it)."""
    import onnx

    try:
        model = onnx.load(str(path), load_external_data=False)
        onnx.checker.check_model(model)
    except Exception:  # protobuf and the checker raise many types; any of them means no
        return False
    return len(model.graph.node) > 0
