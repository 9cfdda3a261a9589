"""What an ONNX file must be before it is stored: one valid, self-contained model that
onnxruntime loads and runs on the sample. Reading ONNX runs no code from the file, so
`register` checks it here; pickles and torch files are only loaded by `convert`."""

from __future__ import annotations

from pathlib import Path

import onnx

from .data import Sample, feed
from .failures import SAMPLE_HINT, ConversionError, one_line, step


def _tensors(model: onnx.ModelProto) -> list[onnx.TensorProto]:
    tensors = list(model.graph.initializer)
    for node in model.graph.node:
        tensors += [a.t for a in node.attribute if a.HasField("t")]
    return tensors


def verify_onnx(path: Path, why: str = "") -> None:
    """Refuse anything that is not one valid, self-contained ONNX model (before it is stored).

    The registry keeps one file per version, so tensors in external data files would be lost;
    the checker runs with full shape inference, as onnxruntime will load it. `why` says what
    called the file ONNX (its suffix, --framework, mlops.yaml), for the message.
    """
    said = f", though {why} says it is" if why else ""
    try:
        model = onnx.load(str(path), load_external_data=False)
    except Exception as exc:  # protobuf raises DecodeError, RuntimeError, ...
        raise ConversionError(
            f"{path.name} is not an ONNX model{said} ({one_line(exc)}); " + _other_format_hint(path)
        ) from None
    check_external_data(path)
    external = [t.name for t in _tensors(model) if t.data_location == onnx.TensorProto.EXTERNAL]
    if external:
        raise ConversionError(
            f"{path.name} keeps tensor {external[0]!r} (and {len(external) - 1} more) in "
            "external data files; the registry stores one file per version: embed "
            "them with onnx.save(onnx.load(PATH), OUT) (models under 2 GiB)"
        )
    try:
        onnx.checker.check_model(model, full_check=True)
    except (onnx.checker.ValidationError, onnx.shape_inference.InferenceError) as exc:
        # An empty or foreign file can parse as an empty model: that is no model at all.
        raise ConversionError(
            f"{path.name} is not a valid ONNX model{said} ({one_line(exc)}); " + _other_format_hint(path)
        ) from None
    if not model.graph.input or not model.graph.output:
        raise ConversionError(f"{path.name} is not a usable ONNX model: its graph has no inputs or no outputs")


def _other_format_hint(path: Path) -> str:
    if path.suffix.lower() == ".onnx":  # the suffix alone makes it ONNX: a flag cannot override it
        return "if another library saved it, give it that library's suffix (.joblib, .pkl, .pt) and register it again"
    return "register it with the framework that saved it (--framework sklearn, pytorch, lightgbm or xgboost)"


def check_external_data(path: Path) -> None:
    """ONNX external data must stay inside the model's folder: no `..`, no absolute paths."""
    model = onnx.load(str(path), load_external_data=False)
    folder = path.resolve().parent
    for tensor in _tensors(model):
        if tensor.data_location != onnx.TensorProto.EXTERNAL:
            continue
        location = next((e.value for e in tensor.external_data if e.key == "location"), "")
        target = (folder / location).resolve()
        if not location or Path(location).is_absolute() or not target.is_relative_to(folder):
            raise ConversionError(
                f"{path.name}: tensor {tensor.name!r} keeps its data at "
                f"{location!r}, outside the model's folder; refused"
            )


def try_on_sample(path: Path, rows: Sample, sample: str) -> None:
    """Load a verified ONNX file into onnxruntime and run it on the rows `convert` will use,
    so that a model the server could not run is refused before it is stored."""
    from .onnx_tools import session

    with step("loading it into onnxruntime", path):
        sess = session(path.read_bytes())
    inputs = feed(sess.get_inputs(), rows)
    with step(f"running it on {sample}", path, SAMPLE_HINT):
        sess.run(None, inputs)
