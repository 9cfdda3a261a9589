"""`models[]`: what is trained, where its artifact is, how it is converted, checked and measured."""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import Field, model_validator

from .build import Build
from .types import Name, SpecModel

Framework = Literal["sklearn", "onnx", "pytorch", "lightgbm", "xgboost"]
# The Open Inference Protocol's tensor datatypes.
Datatype = Literal[
    "BOOL", "UINT8", "UINT16", "UINT32", "UINT64", "INT8", "INT16", "INT32", "INT64", "FP16", "FP32", "FP64", "BYTES"
]
Dim = Annotated[int, Field(ge=-1)]


class Tensor(SpecModel):
    name: str = Field(min_length=1)
    dtype: Datatype
    shape: tuple[Dim, ...] = Field(description="Dimensions; -1 where dynamic (e.g. the batch).")

    @model_validator(mode="after")
    def _no_zero_dims(self) -> Tensor:
        if 0 in self.shape:
            raise ValueError("a dimension of 0 makes an empty tensor; use -1 for a dynamic size")
        return self


class Signature(SpecModel):
    inputs: tuple[Tensor, ...] = Field(min_length=1)
    outputs: tuple[Tensor, ...] = Field(min_length=1)


class Tolerance(SpecModel):
    atol: float = Field(1e-5, ge=0, description="Largest absolute difference allowed.")
    rtol: float = Field(1e-4, ge=0, description="Largest relative difference allowed.")


class Convert(SpecModel):
    opset: int | None = Field(None, ge=7, le=23, description="ONNX opset; default: the converter's.")
    optimization: Literal["disabled", "basic", "extended", "all"] = "extended"
    quantize: Literal["none", "dynamic-int8"] = "none"
    tolerance: Tolerance = Tolerance()


class Validate(SpecModel):
    dataset: str = Field(description="Labelled data: .npz with X and y, or .csv/.parquet.")
    label: str = Field("label", description="The label column of a .csv or .parquet dataset.")
    metric: Literal["accuracy", "f1", "roc_auc", "precision", "recall", "rmse", "mae", "r2"]
    threshold: float


class Profile(SpecModel):
    batch_sizes: tuple[Annotated[int, Field(ge=1, le=65536)], ...] = Field((1, 8, 32), min_length=1)
    concurrency: tuple[Annotated[int, Field(ge=1, le=4096)], ...] = Field((1, 8, 32), min_length=1)
    p99_latency_ms: float = Field(100.0, gt=0, description="Latency objective at the 99th percentile.")
    target_rps: float | None = Field(None, gt=0, description="Requests per second to plan for.")


class Model(SpecModel):
    name: Name
    framework: Framework
    source: str = Field(min_length=1, description="The trained artifact, relative to mlops.yaml.")
    train: str | None = Field(None, description="Command that trains the model and writes `source`.")
    signature: Signature | None = None
    sample: str | None = Field(None, description="Input data for parity checks and profiling.")
    handler: str | None = Field(None, description="Python file with preprocess()/postprocess().")
    convert: Convert = Convert()
    validate_: Validate | None = Field(None, alias="validate")
    profile: Profile = Profile()
    build: Build | None = None
