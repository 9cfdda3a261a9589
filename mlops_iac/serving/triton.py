"""Triton's extensions of the v2 protocol: classification, model configuration, statistics.

Shapes follow Triton's own JSON (model_config.proto as JSON, the statistics extension), so
Triton's clients and tools (`get_model_config`, `get_inference_statistics`) read them.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np
import orjson

from .protocol import ClientError
from .runtime import ModelRuntime

if TYPE_CHECKING:
    from .inference import Entry

EXTENSIONS = ["binary_tensor_data", "classification", "model_configuration", "statistics"]

_CONFIG_TYPES = {
    "BOOL": "TYPE_BOOL",
    "UINT8": "TYPE_UINT8",
    "UINT16": "TYPE_UINT16",
    "UINT32": "TYPE_UINT32",
    "UINT64": "TYPE_UINT64",
    "INT8": "TYPE_INT8",
    "INT16": "TYPE_INT16",
    "INT32": "TYPE_INT32",
    "INT64": "TYPE_INT64",
    "FP16": "TYPE_FP16",
    "FP32": "TYPE_FP32",
    "FP64": "TYPE_FP64",
    "BYTES": "TYPE_STRING",
}


def classify(runtime: ModelRuntime, outputs: dict[str, np.ndarray], wanted: dict[str, int]) -> dict[str, np.ndarray]:
    """Replace each output named in `wanted` by its top k classes as "score:index[:label]" strings,
    per row when the model batches (shape [batch, k]), else over the whole tensor (shape [k])."""
    result = dict(outputs)
    for name, k in wanted.items():
        array = result.get(name)
        if array is None:
            raise ClientError(400, f"classification asked for output {name!r}, which this answer lacks")
        if array.dtype.kind not in "biuf":
            raise ClientError(400, f"output {name!r} holds {array.dtype} values; classification needs numbers")
        batched = runtime.batchable and array.ndim >= 1
        rows = array.reshape(array.shape[0], -1) if batched else array.reshape(1, -1)
        top = min(k, rows.shape[1])
        # Highest score first; ties keep the lower index first (a stable sort of the negated scores).
        order = np.argsort(-rows.astype(np.float64), axis=1, kind="stable")[:, :top]
        texts = np.empty(order.shape, dtype=object)
        for r, indices in enumerate(order):
            for c, index in enumerate(indices):
                texts[r, c] = _class_text(rows[r, index], int(index), runtime.labels)
        result[name] = texts if batched else texts.reshape(top)
    return result


def _class_text(score: Any, index: int, labels: list[str] | None) -> str:
    # Triton writes scores with C++ std::to_string: "%f" for floats, plain digits for integers.
    value = f"{score:f}" if isinstance(score, np.floating) else str(int(score))
    if labels is not None and index < len(labels):
        return f"{value}:{index}:{labels[index]}"
    return f"{value}:{index}"


def model_config(runtime: ModelRuntime) -> dict[str, Any]:
    """Triton's model configuration: dims leave the batch dimension out when max_batch_size > 0."""
    config = runtime.config
    batching = config.max_batch_size > 1 and runtime.batchable
    max_batch = config.max_batch_size if batching else 0

    def tensor(spec: Any) -> dict[str, Any]:
        dims = list(spec.shape[1:] if max_batch else spec.shape)
        return {"name": spec.name, "data_type": _CONFIG_TYPES[spec.datatype], "dims": dims}

    doc: dict[str, Any] = {
        "name": runtime.name,
        "platform": "onnxruntime_onnx",
        "backend": "onnxruntime",
        "version_policy": {"specific": {"versions": [runtime.version]}},
        "max_batch_size": max_batch,
        "input": [tensor(t) for t in runtime.inputs.values()],
        "output": [tensor(t) for t in runtime.outputs.values()],
        "instance_group": [{"name": runtime.name, "kind": "KIND_GPU" if config.gpu else "KIND_CPU", "count": 1}],
        "parameters": {"intra_op_thread_count": {"string_value": str(config.threads)}},
    }
    if batching:
        doc["dynamic_batching"] = {"max_queue_delay_microseconds": int(config.max_delay_ms * 1000)}
    return doc


def duration(count: int, seconds: float) -> dict[str, int]:
    return {"count": count, "ns": int(seconds * 1e9)}


def statistics(entry: Entry, failed: int) -> dict[str, Any]:
    """Triton's statistics of one version, from the counters the metrics already keep
    (`failed`: its requests answered with an error). compute_input and compute_output are
    inside compute_infer here (their ns are 0)."""
    runtime = entry.runtime
    ok = entry.latency.counts
    count = sum(ok)
    executions = entry.runs + (entry.batcher.executions if entry.batcher is not None else 0)
    return {
        "name": runtime.name,
        "version": runtime.version,
        "last_inference": int(entry.last * 1000),
        "inference_count": entry.rows,
        "execution_count": executions,
        "inference_stats": {
            "success": duration(count, entry.latency.sum),
            "fail": duration(failed, 0.0),
            "queue": duration(sum(entry.queue.counts), entry.queue.sum),
            "compute_input": duration(count, 0.0),
            "compute_infer": duration(sum(entry.inference.counts), entry.inference.sum),
            "compute_output": duration(count, 0.0),
        },
        "batch_stats": [],
    }


def model_stats(requests: Any, entries: list[Entry]) -> bytes:
    """The statistics extension's answer for `entries`; `requests`: the requests counter,
    whose non-200 series are each version's failures."""
    failed: dict[tuple[str, str], int] = {}
    for metric in requests.collect():
        for sample in metric.samples:
            if sample.name.endswith("_total") and sample.labels["status"] != "200":
                key = (sample.labels["model"], sample.labels["version"])
                failed[key] = failed.get(key, 0) + int(sample.value)
    return orjson.dumps(
        {"model_stats": [statistics(e, failed.get((e.runtime.name, e.runtime.version), 0)) for e in entries]}
    )
