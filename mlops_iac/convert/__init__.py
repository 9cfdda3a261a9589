"""Conversion to ONNX, proved by a parity check, measured against the native model.

`convert_artifact` is the whole pipeline for one artifact: convert, optimise offline,
compare with the native model on the sample, optionally quantise (kept only within the
user's bound), validate on labelled data, time native against ONNX. It returns a report;
the CLI stores the result in the registry and the lock.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import onnx

from ..signatures import breaking_changes
from . import measure, onnx_tools
from .data import DataError, Sample, Table
from .failures import SAMPLE_HINT, ConversionError, step
from .frameworks import convert
from .parity import Parity, compare
from .pipeline import UnsupportedStep


@dataclass(frozen=True)
class Options:
    opset: int | None = None
    optimization: str = "extended"
    quantize: str = "none"
    atol: float = 1e-5
    rtol: float = 1e-4
    measure_speed: bool = True


@dataclass(frozen=True)
class Validation:
    features: Sample
    labels: np.ndarray
    metric: str
    threshold: float


@dataclass(frozen=True)
class Report:
    model: bytes
    parity: Parity
    signature: dict[str, Any]
    opset: int
    optimization: str
    quantization: dict[str, Any]
    speedup: dict[str, Any] = field(default_factory=dict)
    validation: dict[str, Any] | None = None
    breaking: tuple[str, ...] = ()
    hint: str | None = None  # why parity may have failed, and what to change

    def facts(self) -> dict[str, Any]:
        """What goes into the registry's artifact record and the lock's `onnx` section."""
        return {
            "opset": self.opset,
            "optimization": self.optimization,
            "quantization": self.quantization,
            "parity": self.parity.facts(),
            "speedup": self.speedup,
            "signature": self.signature,
            "breaking": list(self.breaking),
        }


def convert_artifact(
    framework: str,
    artifact: Path,
    sample: Sample,
    options: Options,
    *,
    validation: Validation | None = None,
    previous_signature: dict[str, Any] | None = None,
) -> Report:
    converted = convert(framework, artifact, sample, options.opset)
    base = converted.model.SerializeToString()
    # Every step names itself when it fails: onnxruntime's and the frameworks' own errors span
    # lines and name no file.
    with step(f"optimising its ONNX model ({options.optimization})", artifact):
        optimized = onnx_tools.optimize(base, options.optimization)
    with step(f"running the {framework} model on the sample", artifact, SAMPLE_HINT):
        if converted.native is not None:
            expected = converted.native(sample)
        else:  # an ONNX artifact: the optimised graph must answer as the original does
            expected = onnx_tools.run(onnx_tools.session(base, level="disabled"), sample)
    names = [o.name for o in converted.model.graph.output]

    def parity_of(model: bytes) -> Parity:
        with step("running its ONNX model on the sample", artifact, SAMPLE_HINT):
            actual = onnx_tools.run(onnx_tools.session(model), sample)
        return compare(expected, actual, names, converted.kinds, options.atol, options.rtol)

    parity = parity_of(optimized)
    final, quantization = optimized, {"mode": options.quantize, "kept": False}
    if parity.passed and options.quantize == "dynamic-int8":
        with step("quantising its ONNX model", artifact):
            final, quantization = _quantize(base, optimized, options, parity_of, validation)
    report = Report(
        model=final,
        parity=parity if final is optimized else parity_of(final),
        signature=onnx_tools.signature(onnx.load_from_string(final)),
        opset=onnx_tools.opset(converted.model),
        optimization=options.optimization,
        quantization=quantization,
        hint=converted.hint,
    )
    if not report.parity.passed:
        return report
    extra: dict[str, Any] = {"breaking": tuple(breaking_changes(previous_signature, report.signature))}
    if validation is not None:
        with step("running its ONNX model on the validation data", artifact, SAMPLE_HINT):
            extra["validation"] = _validate(final, validation)
    if options.measure_speed and converted.native_call is not None:
        with step("timing the native model against ONNX", artifact):
            extra["speedup"] = measure.speedup(converted.native_call, final, sample, prepare=converted.prepare)
    return Report(**{**report.__dict__, **extra})


def _quantize(
    base: bytes, optimized: bytes, options: Options, parity_of: Any, validation: Validation | None
) -> tuple[bytes, dict[str, Any]]:
    quantized = onnx_tools.optimize(onnx_tools.quantize_dynamic_int8(base), options.optimization)
    parity = parity_of(quantized)
    facts: dict[str, Any] = {
        "mode": options.quantize,
        "parity": parity.facts(),
        "sizeBytes": len(quantized),
        "floatSizeBytes": len(optimized),
    }
    kept = parity.passed
    if not kept and validation is not None:
        result = _validate(quantized, validation)
        facts["validation"] = result
        kept = result["passed"]
    facts["kept"] = kept
    facts["reason"] = (
        "parity within tolerance"
        if parity.passed
        else "validation metric still meets its threshold"
        if kept
        else "outside the tolerance; the float model is kept"
    )
    return (quantized if kept else optimized), facts


def _validate(model: bytes, validation: Validation) -> dict[str, Any]:
    outputs = onnx_tools.run(onnx_tools.session(model), validation.features)
    value = measure.metric(validation.metric, validation.labels, outputs)
    return {
        "metric": validation.metric,
        "value": round(value, 6),
        "threshold": validation.threshold,
        "passed": measure.meets(validation.metric, value, validation.threshold),
        "rows": len(validation.labels),
    }


__all__ = [
    "ConversionError",
    "DataError",
    "Options",
    "Report",
    "Sample",
    "Table",
    "UnsupportedStep",
    "Validation",
    "convert_artifact",
]
