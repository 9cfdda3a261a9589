"""One converter per framework: load the native artifact, convert it, and say how to run it.

Loading a pickle, joblib or torch file runs code from that file. This module is the only
place in mlops-iac that does it, and only `mlops-iac convert` calls it; the server, the
profiler and the build load nothing but ONNX.
"""

from __future__ import annotations

import contextlib
import tempfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import onnx

from . import pipeline
from .data import DataError, Sample, Table, feed
from .failures import ConversionError, loading, one_line, step
from .onnx_checks import check_external_data, verify_onnx
from .parity import OutputKind

INPUT_NAME = "input"
DEFAULT_OPSET = 17  # supported by every onnxruntime and Triton release still in use
Runner = Callable[[Sample], list[np.ndarray]]
__all__ = ["ConversionError", "Converted", "check_external_data", "convert", "verify_onnx"]


def _matrix(sample: Sample) -> np.ndarray:
    return sample.matrix() if isinstance(sample, Table) else sample


@dataclass(frozen=True)
class Converted:
    model: onnx.ModelProto
    kinds: tuple[OutputKind, ...]
    native: Runner | None  # outputs in the order of the ONNX graph's outputs
    native_call: Callable[[Any], Any] | None  # what a user would call (for timing), on prepare()'s value
    prepare: Callable[[Sample], Any] = _matrix  # the sample as the native model takes it
    hint: str | None = None  # what to try when parity fails


def convert(framework: str, path: Path, sample: Sample, opset: int | None) -> Converted:
    converters: dict[str, Callable[[str, Path, Sample, int | None], Converted]] = {
        "sklearn": _sklearn,
        "lightgbm": _sklearn,
        "xgboost": _sklearn,
        "pytorch": _pytorch,
        "onnx": _onnx,
    }
    if framework not in converters:
        raise ConversionError(f"no converter for framework {framework!r}")
    try:
        return converters[framework](framework, path, sample, opset)
    except (ConversionError, DataError, pipeline.UnsupportedStep):
        raise
    except Exception as exc:
        raise ConversionError(f"converting {path.name} ({framework}) failed: {one_line(exc)}") from exc


# --- scikit-learn, and LightGBM and XGBoost through their scikit-learn API ------------------


def _sklearn(framework: str, path: Path, sample: Sample, opset: int | None) -> Converted:
    import joblib
    from skl2onnx import to_onnx

    _register_boosters()
    with loading(framework, path):
        model = joblib.load(path)
    _check_estimator(model, framework, path)
    pipeline.check(model, path.name)
    prepare, inputs = _sklearn_inputs(model, sample)
    proba = hasattr(model, "predict_proba") and _is_classifier(model)
    target: int | dict[str, int] = opset or DEFAULT_OPSET
    if _has_booster(model):  # onnxmltools' tree converters speak ai.onnx.ml 3 at most
        target = {"": opset or DEFAULT_OPSET, "ai.onnx.ml": 3}
    with _integer_tree_attributes():
        # zipmap off: probabilities as one tensor, as the v2 protocol carries them.
        options = {"zipmap": False} if _is_classifier(model) else None
        onx = to_onnx(model, options=options, target_opset=target, initial_types=inputs)
    outputs = [o.name for o in onx.graph.output]
    if proba:
        kinds: tuple[OutputKind, ...] = ("label", "float")

        def run(x: Sample) -> list[np.ndarray]:
            native = prepare(x)
            return [model.predict(native), model.predict_proba(native)]

        return Converted(onx, kinds[: len(outputs)], run, model.predict_proba, prepare, pipeline.parity_hint(model))
    first: OutputKind = "label" if _is_classifier(model) else "float"
    rest = _floats(len(outputs) - 1)
    return Converted(
        onx, (first, *rest), lambda x: [model.predict(prepare(x))], model.predict, prepare, pipeline.parity_hint(model)
    )


def _check_estimator(model: Any, framework: str, path: Path) -> None:
    from sklearn.exceptions import NotFittedError
    from sklearn.utils.validation import check_is_fitted

    if not hasattr(model, "predict"):
        raise ConversionError(
            f"{path.name} holds a {type(model).__name__}, not a fitted estimator; save the fitted "
            f"{framework} model itself with joblib.dump"
        )
    try:
        if hasattr(model, "fit"):  # check_is_fitted refuses objects that are not estimators
            check_is_fitted(model)
    except NotFittedError:
        raise ConversionError(
            f"{path.name} holds a {type(model).__name__} that was never fitted; save it after fit()"
        ) from None


def _sklearn_inputs(model: Any, sample: Sample) -> tuple[Callable[[Sample], Any], list[tuple[str, Any]]]:
    """A model fitted on a DataFrame takes one input per column, named and typed as the sample's
    columns; any other model one float matrix named `input`."""
    names = pipeline.feature_names(model)
    if names is not None and isinstance(sample, Table):
        table = sample.select(names)

        def frame(x: Sample) -> Any:
            if not isinstance(x, Table):
                raise DataError("the model takes named columns; give a .csv or .parquet sample")
            return x.select(names).frame()

        return frame, pipeline.initial_types(table)
    if names is not None and _selects_by_name(model):
        raise DataError(
            f"the model was fitted on a DataFrame with columns {', '.join(names)}; give a "
            ".csv or .parquet sample with those columns (not a bare matrix)"
        )
    return _matrix, [(INPUT_NAME, _float_input(_matrix(sample)))]


def _selects_by_name(model: Any) -> bool:
    from sklearn.compose import ColumnTransformer

    return any(isinstance(step, ColumnTransformer) for _, step in pipeline.steps(model))


def _floats(count: int) -> tuple[OutputKind, ...]:
    return tuple("float" for _ in range(count))


def _has_booster(model: Any) -> bool:
    parts = [model]
    if hasattr(model, "get_params"):
        parts += list(model.get_params(deep=True).values())
    return any(type(p).__module__.split(".")[0] in ("lightgbm", "xgboost") for p in parts)


def _is_classifier(model: Any) -> bool:
    from sklearn.base import is_classifier

    return bool(is_classifier(model))


def _float_input(sample: np.ndarray) -> Any:
    from skl2onnx.common.data_types import FloatTensorType

    return FloatTensorType([None, int(sample.shape[1])])


_REGISTERED: list[bool] = []


def _register_boosters() -> None:
    """Teach skl2onnx the LightGBM and XGBoost converters of onnxmltools (pipelines too)."""
    if _REGISTERED:
        return
    from skl2onnx import update_registered_converter
    from skl2onnx.common.shape_calculator import (
        calculate_linear_classifier_output_shapes,
        calculate_linear_regressor_output_shapes,
    )

    options = {"nocl": [True, False], "zipmap": [True, False, "columns"]}
    with contextlib.suppress(ImportError):
        from lightgbm import LGBMClassifier, LGBMRegressor
        from onnxmltools.convert.lightgbm.operator_converters.LightGbm import convert_lightgbm

        update_registered_converter(
            LGBMClassifier,
            "LightGbmLGBMClassifier",
            calculate_linear_classifier_output_shapes,
            convert_lightgbm,
            options=options,
        )
        update_registered_converter(
            LGBMRegressor,
            "LightGbmLGBMRegressor",
            calculate_linear_regressor_output_shapes,
            convert_lightgbm,
            options={"split": None},
        )
    with contextlib.suppress(ImportError):
        from onnxmltools.convert.xgboost.operator_converters.XGBoost import convert_xgboost
        from xgboost import XGBClassifier, XGBRegressor

        update_registered_converter(
            XGBClassifier,
            "XGBoostXGBClassifier",
            calculate_linear_classifier_output_shapes,
            convert_xgboost,
            options=options,
        )
        update_registered_converter(
            XGBRegressor, "XGBoostXGBRegressor", calculate_linear_regressor_output_shapes, convert_xgboost
        )
    _REGISTERED.append(True)


@contextlib.contextmanager
def _integer_tree_attributes() -> Iterator[None]:
    """Work around skl2onnx 1.20 putting Python bools into integer-list attributes.

    Its HistGradientBoosting converter fills `nodes_missing_value_tracks_true` with a mix of
    numpy integers and `False`; protobuf 5 and later refuse a bool in a repeated int field
    ("Expected an int, got a boolean"). The values mean 0 and 1, so we pass them as ints.
    """
    from skl2onnx.common import _container

    original = _container.ModelComponentContainer.add_node

    def add_node(self: Any, *args: Any, **attrs: Any) -> Any:
        for key, value in attrs.items():
            if isinstance(value, list) and any(isinstance(v, bool | np.bool_) for v in value):
                attrs[key] = [int(v) for v in value]
        return original(self, *args, **attrs)

    _container.ModelComponentContainer.add_node = add_node
    try:
        yield
    finally:
        _container.ModelComponentContainer.add_node = original


# --- PyTorch ---------------------------------------------------------------------------------


def _pytorch(framework: str, path: Path, sample: Sample, opset: int | None) -> Converted:
    import torch

    sample = _matrix(sample)
    with loading(framework, path):
        try:
            module = torch.jit.load(str(path), map_location="cpu")  # type: ignore[no-untyped-call, unused-ignore]
            scripted = True
        except RuntimeError:
            # A whole pickled nn.Module: its classes must be importable here.
            module = torch.load(str(path), map_location="cpu", weights_only=False)
            scripted = False
    if not isinstance(module, torch.nn.Module):
        raise ConversionError(
            f"{path.name} holds a {type(module).__name__}, not a torch module "
            "(save the model with torch.jit.save or torch.save(model))"
        )
    module.eval()
    example = torch.from_numpy(sample[: min(len(sample), 2)].copy())
    onx = _export_torch(module, example, opset, scripted)

    def call(x: np.ndarray) -> Any:
        with torch.no_grad():
            return module(torch.from_numpy(np.ascontiguousarray(x)))

    def run(x: Sample) -> list[np.ndarray]:
        out = call(_matrix(x))
        outs = out if isinstance(out, tuple | list) else (out,)
        return [o.detach().numpy() for o in outs]

    return Converted(onx, _floats(len(onx.graph.output)), run, call)


def _export_torch(module: Any, example: Any, opset: int | None, scripted: bool) -> onnx.ModelProto:
    import torch

    if scripted:  # the torch.export-based exporter cannot take a ScriptModule
        with tempfile.TemporaryDirectory() as tmp:
            out = Path(tmp) / "model.onnx"
            torch.onnx.export(
                module,
                (example,),
                out,
                input_names=[INPUT_NAME],
                output_names=["output"],
                dynamic_axes={INPUT_NAME: {0: "batch"}, "output": {0: "batch"}},
                opset_version=opset or DEFAULT_OPSET,
                dynamo=False,
            )
            return onnx.load(str(out))
    program = torch.onnx.export(
        module,
        (example,),
        input_names=[INPUT_NAME],
        output_names=["output"],
        dynamic_shapes=({0: torch.export.Dim("batch")},),
        dynamo=True,
        opset_version=opset or 18,
        verbose=False,
    )
    assert program is not None
    proto: onnx.ModelProto = program.model_proto  # typed even where torch is not installed (Any)
    return proto


# --- ONNX as it is -----------------------------------------------------------------------------


def _onnx(framework: str, path: Path, sample: Sample, opset: int | None) -> Converted:
    with loading(framework, path):
        check_external_data(path)
        model = onnx.load(str(path), load_external_data=True)
    try:
        onnx.checker.check_model(model, full_check=True)
    except (onnx.checker.ValidationError, onnx.shape_inference.InferenceError) as exc:
        raise ConversionError(f"{path.name} is not a valid ONNX model: {one_line(exc)}") from None
    import onnxruntime as ort

    with step("loading it into onnxruntime", path):
        session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])

    def run(x: Sample) -> list[np.ndarray]:
        return [np.asarray(o) for o in session.run(None, feed(session.get_inputs(), x))]

    kinds: tuple[OutputKind, ...] = tuple(
        "label" if o.type.tensor_type.elem_type in _INTEGER_TYPES else "float" for o in model.graph.output
    )
    return Converted(model, kinds, run, None)


_INTEGER_TYPES = {onnx.TensorProto.INT64, onnx.TensorProto.INT32, onnx.TensorProto.STRING, onnx.TensorProto.BOOL}
