"""`mlops-iac convert`: the only command that loads native (pickle, joblib, torch) artifacts."""

from __future__ import annotations

import sys
import tempfile
from pathlib import Path
from typing import Any

import click
import orjson

from .cli_registry import file_option, project_registry
from .convert import Options, Report, Validation, convert_artifact
from .convert.data import Sample, Table, read_examples, read_sample
from .errors import MlopsIacError
from .lock import BaselineFacts, Lock, OnnxFacts, ValidationFacts, update_lock
from .registry import Registry, Version, parse_ref
from .registry.records import Status
from .resolve import ResolvedModel, Workspace


@click.command()
@click.argument("ref")
@click.option("--sample", type=click.Path(exists=True, dir_okay=False, path_type=Path),
              help="Inputs for the parity check (.npy, .npz, .csv, .parquet); default: the "
                   "model's `sample` in mlops.yaml.")
@click.option("--no-speed", is_flag=True, help="Skip timing native against ONNX.")
@file_option
def convert(ref: str, sample: Path | None, no_speed: bool, file: Path) -> None:
    """Convert a registered version to ONNX, prove parity, validate, measure the speed-up.

    The ONNX model is stored as a linked artifact of the same version, and the results go to
    the registry and to mlops.lock.

    A pipeline fitted on a DataFrame becomes a model with one input per column, named and
    typed as the sample's columns (give a .parquet or .csv sample). A missing string is ""
    (a string tensor has no null): fill string gaps with "" before training.

    SAFETY: loading a pickle, joblib or torch file runs code from it. This is the only
    mlops-iac command that loads native artifacts; convert only artifacts you trust.
    Everything downstream (serve, profile, build) loads ONNX only.
    """
    registry, ws = project_registry(file, against_lock=False)
    version = registry.resolve(parse_ref(ref))
    convert_version(registry, ws, version, sample, speed=not no_speed)


def convert_version(registry: Registry, ws: Workspace | None, version: Version, sample: Path | None, *,
                    speed: bool) -> None:
    """Convert (or, for an ONNX artifact, check and optimise) one version; store and pin the result."""
    spec = _model_spec(ws, version.model)
    options = _options(spec, speed)
    with tempfile.TemporaryDirectory() as tmp:
        native = Path(tmp) / version.lineage.filename
        registry.pull(parse_ref(f"{version.model}@{version.version}"), native)
        features = _features(sample, spec, ws, version.framework, native)
        report = convert_artifact(version.framework, native, features, options,
                                  validation=_validation(spec, ws),
                                  previous_signature=_previous_signature(registry, version))
        _print(version, report)
        if not report.parity.passed:
            hint = f" Likely cause: {report.hint}." if report.hint else ""
            raise MlopsIacError(f"{version.model}@{version.version}: the ONNX model does not give the "
                                "native model's answers on the sample; nothing was stored." + hint
                                + " Loosen convert.tolerance only if the differences above are acceptable.")
        onnx_file = Path(tmp) / "model.onnx"
        onnx_file.write_bytes(report.model)
        ref_n = parse_ref(f"{version.model}@{version.version}")
        artifact = registry.link(ref_n, "onnx", onnx_file, report.facts())
        base = _baseline(report.model, features)
        base_file = Path(tmp) / "baseline.json"
        base_file.write_bytes(orjson.dumps(base, option=orjson.OPT_SORT_KEYS))
        linked = registry.link(ref_n, "baseline", base_file, {"rows": base["rows"], "columns": len(base["columns"])})
        baseline = BaselineFacts(digest=linked.digest, rows=base["rows"], columns=len(base["columns"]))
    if report.validation is not None:
        status: Status = "validated" if report.validation["passed"] else "rejected"
        registry.set_status(ref_n, status, report.validation)
    pinned = _record_in_lock(ws, version, artifact.digest, artifact.size, report, baseline)
    click.echo(f"stored {version.model}@{version.version} onnx {artifact.digest}"
               + ("; mlops.lock updated" if pinned else ""))
    if report.validation is not None and not report.validation["passed"]:
        click.secho(f"{version.model}@{version.version} REJECTED by validation", fg="red", err=True)
        sys.exit(1)


def _features(given: Path | None, spec: ResolvedModel | None, ws: Workspace | None, framework: str,
              artifact: Path) -> Any:
    """The sample's rows; for an ONNX model without a sample, rows made from its signature."""
    if given is None and framework == "onnx" and (spec is None or spec.sample is None or ws is None):
        from .convert.synthetic import rows_from_signature

        rows, how = rows_from_signature(artifact.read_bytes())
        click.echo(f"no sample: {how}; parity and the drift baseline use them. Set the model's "
                   "`sample` in mlops.yaml for checks on real data")
        return rows
    return read_sample(_sample_path(given, spec, ws))


def _model_spec(ws: Workspace | None, name: str) -> ResolvedModel | None:
    if ws is None:
        return None
    return next((m for m in ws.resolved.models if m.name == name), None)


def _sample_path(given: Path | None, spec: ResolvedModel | None, ws: Workspace | None) -> Path:
    if given is not None:
        return given
    if spec is None or spec.sample is None or ws is None:
        raise click.UsageError("no sample data: pass --sample PATH or set the model's `sample` in "
                               "mlops.yaml")
    return ws.root / spec.sample


def _options(spec: ResolvedModel | None, speed: bool) -> Options:
    if spec is None:
        return Options(measure_speed=speed)
    c = spec.convert
    return Options(opset=c.opset, optimization=c.optimization, quantize=c.quantize,
                   atol=c.tolerance.atol, rtol=c.tolerance.rtol, measure_speed=speed)


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


def _baseline(model: bytes, features: Sample) -> dict[str, Any]:
    """The drift baseline: the sample's features, in the model's input dtype (what the server
    holds and collects), and the ONNX model's answers to them; per named column for a table."""
    import numpy as np

    from .convert.onnx_tools import run, session
    from .monitoring.drift import baseline
    from .serving.protocol import DTYPES
    from .serving.runtime import ORT_TO_V2

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

    from .monitoring.drift import table_baseline

    values = [(n, c if k == "string" else c[~np.isnan(c.astype(np.float64))])
              for n, c, k in zip(table.names, table.columns, table.kinds, strict=True)]
    return table_baseline([(n, v) for n, v in values if v.size], table.rows, outputs)


def _record_in_lock(ws: Workspace | None, version: Version, digest: str, size: int,
                    report: Report, baseline: BaselineFacts) -> bool:
    if ws is None or ws.lock.version(version.model, version.version) is None:
        return False
    facts = OnnxFacts(digest=digest, size=size, opset=report.opset, optimization=report.optimization,
                      inputs=report.signature["inputs"], outputs=report.signature["outputs"],
                      parity=report.parity.facts(), quantization=report.quantization,
                      speedup=report.speedup, breaking=report.breaking)
    sections: dict[str, Any] = {"onnx": facts.model_dump(), "baseline": baseline.model_dump()}
    if report.validation is not None:
        v = report.validation
        sections["validation"] = ValidationFacts(metric=v["metric"], value=v["value"],
                                                 threshold=v["threshold"], passed=v["passed"]).model_dump()

    def change(lock: Lock) -> Lock:
        return lock.with_facts(version.model, version.version, **sections)

    update_lock(ws.lock_path, change)
    return True


def _print(version: Version, report: Report) -> None:
    click.echo(f"{version.model}@{version.version} ({version.framework}) -> ONNX opset {report.opset}, "
               f"optimisation {report.optimization}")
    click.echo(f"parity on {report.parity.rows} sample rows: "
               f"{'passed' if report.parity.passed else 'FAILED'}")
    click.echo(report.parity.describe())
    quant = report.quantization
    if quant.get("mode") not in (None, "none"):
        click.echo(f"quantisation {quant['mode']}: {'kept' if quant['kept'] else 'dropped'} "
                   f"({quant.get('reason', '')})")
    for key, row in sorted(report.speedup.items()):
        if isinstance(row, dict):
            click.echo(f"speed-up at {key.replace('batch', 'batch ')}: native {row['nativeMs']} ms, "
                       f"ONNX {row['onnxMs']} ms, {row['speedup']}x")
    if report.validation is not None:
        v = report.validation
        click.echo(f"validation: {v['metric']} = {v['value']:.4f} (threshold {v['threshold']}) "
                   f"{'passed' if v['passed'] else 'FAILED'}")
    sig = report.signature
    click.echo("signature: " + ", ".join(f"{t['name']} {t['datatype']}{t['shape']}" for t in sig["inputs"])
               + " -> " + ", ".join(f"{t['name']} {t['datatype']}{t['shape']}" for t in sig["outputs"]))
    for change in report.breaking:
        click.secho(f"BREAKING CHANGE against the previous version: {change}", fg="yellow", err=True)
