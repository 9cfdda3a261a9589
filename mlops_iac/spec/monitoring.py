"""`monitoring`: metrics, data collection, drift and alerts; global, and per deployment.

Every field is optional here: what is left out is inherited (deployment, then the global
section, then the defaults in `resolve.py`).
"""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import Field

from .types import SpecModel


class Metrics(SpecModel):
    enabled: bool | None = None


class FileSink(SpecModel):
    kind: Literal["file"]
    path: str = Field("collected/requests.jsonl", description="Relative to the server's data folder.")
    max_bytes: int = Field(100 * 2**20, ge=1024)
    backups: int = Field(5, ge=0, le=1000)


class StdoutSink(SpecModel):
    kind: Literal["stdout"]


class HttpSink(SpecModel):
    kind: Literal["http"]
    url: str = Field(pattern=r"^https?://\S+$", description="CloudEvents receiver (KServe logger).")


Sink = Annotated[FileSink | StdoutSink | HttpSink, Field(discriminator="kind")]


class DataCollection(SpecModel):
    enabled: bool | None = None
    sample_rate: float | None = Field(None, ge=0, le=1)
    sink: Sink | None = None


class Drift(SpecModel):
    baseline: str | None = Field(
        None,
        description="Reference data (.npy, .npz, .csv, .parquet) that `monitor drift` "
        "compares against, answered by the version's ONNX model; default: the "
        "baseline of the model's sample that `convert` stored with the version.",
    )
    threshold: float | None = Field(None, gt=0, description="Population stability index that alerts.")


class Alerts(SpecModel):
    p99_latency_ms: float | None = Field(None, gt=0, description="Default: the profile's SLO.")
    error_rate: float | None = Field(None, ge=0, le=1)


class Monitoring(SpecModel):
    metrics: Metrics = Metrics()
    data_collection: DataCollection = DataCollection()
    drift: Drift = Drift()
    alerts: Alerts = Alerts()
