"""Conversion as every command runs it (`convert`, and `register`/`serve` preparing an ONNX
artifact): the ONNX model, parity, validation and the drift baseline, stored in the registry
and pinned in mlops.lock."""

from __future__ import annotations

import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import orjson

from ..convert import ConversionError, Options, Report, Validation, convert_artifact
from ..convert.data import Sample, Table, read_examples
from ..errors import MlopsIacError
from ..lock import BaselineFacts, Lock, ValidationFacts, update_lock
from ..registry import Registry, Version, parse_ref
from ..registry.records import Artifact, Status
from ..resolve import ResolvedModel, Workspace
from . import features, model_spec, onnx_facts


def convert_version(
    registry: Registry,
    ws: Workspace | None,
    version: Version,
    sample: Path | None,
    *,
    speed: bool,
    echo: Callable[[str], None],
    show: Callable[[Version, Report], None],
) -> Report:
    """Convert (or, for an ONNX artifact, check and optimise) one version; store and pin the result.

    `show` prints the report before anything is stored; a validation that failed is stored
    (status rejected) and returned for the caller to refuse.
    """
    spec = model_spec(ws, version.model)
    options = _options(spec, speed)
    with tempfile.TemporaryDirectory() as tmp:
        native = Path(tmp) / version.lineage.filename
        registry.pull(parse_ref(f"{version.model}@{version.version}"), native)
        rows = features(sample, spec, ws, version.framework, native, echo)
        try:
            report = convert_artifact(
                version.framework,
                native,
                rows,
                options,
                validation=_validation(spec, ws),
                previous_signature=_previous_signature(registry, version),
            )
        except ConversionError as exc:  # the file's name alone may not say which version it is
            raise ConversionError(f"{version.model}@{version.version}: {exc}") from exc
        show(version, report)
        if not report.parity.passed:
            hint = f" Likely cause: {report.hint}." if report.hint else ""
            raise MlopsIacError(
                f"{version.model}@{version.version}: the ONNX model does not give the "
                "native model's answers on the sample; nothing was stored."
                + hint
                + " Loosen convert.tolerance only if the differences above are acceptable."
            )
        onnx_file = Path(tmp) / "model.onnx"
        onnx_file.write_bytes(report.model)
        ref_n = parse_ref(f"{version.model}@{version.version}")
        artifact = registry.link(ref_n, "onnx", onnx_file, report.facts())
        base = baseline(report.model, rows)
        base_file = Path(tmp) / "baseline.json"
        base_file.write_bytes(orjson.dumps(base, option=orjson.OPT_SORT_KEYS))
        linked = registry.link(ref_n, "baseline", base_file, {"rows": base["rows"], "columns": len(base["columns"])})
        stored = BaselineFacts(digest=linked.digest, rows=base["rows"], columns=len(base["columns"]))
    if report.validation is not None:
        status: Status = "validated" if report.validation["passed"] else "rejected"
        registry.set_status(ref_n, status, report.validation)
    pinned = _record_in_lock(ws, version, artifact, report, stored)
    echo(
        f"stored {version.model}@{version.version} onnx {artifact.digest}" + ("; mlops.lock updated" if pinned else "")
    )
    return report


def _options(spec: ResolvedModel | None, speed: bool) -> Options:
    if spec is None:
        return Options(measure_speed=speed)
    c = spec.convert
    return Options(
        opset=c.opset,
        optimization=c.optimization,
        quantize=c.quantize,
        atol=c.tolerance.atol,
        rtol=c.tolerance.rtol,
        measure_speed=speed,
    )


def _validation(spec: ResolvedModel | None, ws: Workspace | None) -> Validation | None:
    if spec is None or spec.validate_ is None or ws is None:
        return None
    rule = spec.validate_
    features, labels = read_examples(ws.root / rule.dataset, rule.label)
    assert labels is not None
    return Validation(features, labels, rule.metric, rule.threshold)


def _previous_signature(registry: Registry, version: Version) -> dict[str, Any] | None:
    index = registry.index(version.model)
    earlier = [v for n, v in sorted(index.versions.items()) if n < version.version and "onnx" in v.artifacts]
    return earlier[-1].artifacts["onnx"].facts.get("signature") if earlier else None


def baseline(model: bytes, features: Sample) -> dict[str, Any]:
    """The drift baseline: the sample's features, in the model's input dtype (what the server
    holds and collects), and the ONNX model's answers to them; per named column for a table."""
    import numpy as np

    from ..convert.onnx_tools import run, session
    from ..monitoring.baseline import baseline
    from ..serving.protocol import DTYPES
    from ..serving.runtime import ORT_TO_V2

    sess = session(model)
    if isinstance(features, Table):
        outputs = dict(zip([o.name for o in sess.get_outputs()], run(sess, features), strict=True))
        return _table_baseline(features, outputs)
    first = sess.get_inputs()[0]
    dtype = DTYPES.get(ORT_TO_V2.get(first.type, ""))
    if dtype is not None and dtype.kind in "biuf":
        features = np.asarray(features).astype(dtype)
    outputs = dict(zip([o.name for o in sess.get_outputs()], sess.run(None, {first.name: features}), strict=True))
    flat = features.reshape(len(features), -1)  # one column per input element, images included
    return baseline(flat, outputs, first.name)


def _table_baseline(table: Table, outputs: dict[str, Any]) -> dict[str, Any]:
    """Per named column: the server collects one tensor per column under the column's name, which
    is how drift matches them. Numeric columns binned (their missing values left out), string
    columns as categories ("" included: it is what a client sends for a missing string)."""
    import numpy as np

    from ..monitoring.baseline import table_baseline

    values = [
        (n, c if k == "string" else c[~np.isnan(c.astype(np.float64))])
        for n, c, k in zip(table.names, table.columns, table.kinds, strict=True)
    ]
    return table_baseline([(n, v) for n, v in values if v.size], table.rows, outputs)


def _record_in_lock(
    ws: Workspace | None, version: Version, artifact: Artifact, report: Report, baseline: BaselineFacts
) -> bool:
    if ws is None or ws.lock.version(version.model, version.version) is None:
        return False  # not pinned yet: pinning it later takes these facts from the registry
    sections: dict[str, Any] = {"onnx": onnx_facts(artifact).model_dump(), "baseline": baseline.model_dump()}
    if report.validation is not None:
        v = report.validation
        sections["validation"] = ValidationFacts(
            metric=v["metric"], value=v["value"], threshold=v["threshold"], passed=v["passed"]
        ).model_dump()

    def change(lock: Lock) -> Lock:
        return lock.with_facts(version.model, version.version, **sections)

    update_lock(ws.lock_path, change)
    return True
