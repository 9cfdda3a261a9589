"""The shadow report: the records a server collected for mirrored requests, paired by request
id (the primary's answer and the shadow's), compared output by output and timed.

Pure but for reading the files and drawing the PNG: `pair` takes records and returns numbers,
`markdown` lays them out (templates/markdown/shadow.md.j2).
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import MlopsIacError
from ..render import render
from .collected import collected_files


@dataclass(frozen=True)
class OutputComparison:
    name: str
    kind: str  # "label" (whole numbers or strings: agreement) or "numeric" (differences)
    agreement: float  # share of pairs whose output is identical
    mean_abs: float | None = None  # numeric: mean and largest absolute difference, element-wise
    max_abs: float | None = None


@dataclass(frozen=True)
class ShadowComparison:
    model: str
    primary: tuple[str, ...]
    shadow: str
    pairs: int
    unpaired_primary: int  # mirrored, but the shadow's record is missing (dropped, or not yet written)
    unpaired_shadow: int
    failed: int  # the shadow failed on the request
    outputs: tuple[OutputComparison, ...]
    latency_ms: dict[str, tuple[float, float]]  # role -> (p50, p99)
    samples_ms: dict[str, tuple[float, ...]] = field(repr=False, default_factory=dict)


def read_records(paths: Sequence[Path]) -> list[dict[str, Any]]:
    """Every JSON line of the given files (a folder: its *.jsonl files and their rotations)."""
    records = []
    for file in collected_files(paths):
        with open(file, encoding="utf-8") as handle:
            for number, line in enumerate(handle, 1):
                if not line.strip():
                    continue
                try:
                    record = json.loads(line)
                except json.JSONDecodeError as exc:
                    raise MlopsIacError(
                        f"{file}:{number}: not a JSON record ({exc.msg}); expected the JSON "
                        "lines a server's data collection writes"
                    ) from None
                if isinstance(record, dict):
                    records.append(record)
    return records


def _kind(values: Iterable[Any]) -> str:
    flat = np.asarray(list(values), dtype=object).ravel()
    whole = all(isinstance(v, str | bool | int) for v in flat)
    return "label" if whole else "numeric"


def _compare(name: str, pairs: list[tuple[Any, Any]]) -> OutputComparison:
    same = sum(1 for a, b in pairs if a == b)
    agreement = same / len(pairs) if pairs else 0.0
    if _kind(a for a, _ in pairs) == "label":
        return OutputComparison(name, "label", agreement)
    flat = [(np.asarray(a, dtype=float).ravel(), np.asarray(b, dtype=float).ravel()) for a, b in pairs]
    diffs = [np.abs(a - b) for a, b in flat if a.size == b.size]
    every = np.concatenate(diffs) if diffs else np.zeros(0)
    return OutputComparison(
        name,
        "numeric",
        agreement,
        float(every.mean()) if every.size else None,
        float(every.max()) if every.size else None,
    )


def _quantiles(values: Sequence[float]) -> tuple[float, float]:
    if not values:
        return (float("nan"), float("nan"))
    return (float(np.percentile(values, 50)), float(np.percentile(values, 99)))


def pair(records: Iterable[dict[str, Any]], model: str, shadow: str) -> ShadowComparison:
    """Pairs the primary's records of mirrored requests with shadow `shadow`'s, by request id."""
    primary: dict[str, dict[str, Any]] = {}
    shadows: dict[str, dict[str, Any]] = {}
    for r in records:  # the last record of an id wins (a file collected before each was written once)
        if r.get("model") != model or r.get("id") is None:
            continue
        if r.get("shadow") and str(r.get("version")) == shadow:
            shadows[str(r["id"])] = r
        elif r.get("mirrored") and str(r.get("version")) != shadow:
            primary[str(r["id"])] = r
    both = sorted(set(primary) & set(shadows))
    failed = [i for i in both if "error" in shadows[i]]
    good = [i for i in both if "error" not in shadows[i]]
    names = sorted({n for i in good for n in primary[i].get("outputs", {}) if n in shadows[i].get("outputs", {})})
    outputs = tuple(
        _compare(
            n,
            [
                (primary[i]["outputs"][n], shadows[i]["outputs"][n])
                for i in good
                if n in primary[i]["outputs"] and n in shadows[i]["outputs"]
            ],
        )
        for n in names
    )
    samples = {
        "primary": tuple(float(primary[i]["latencyMs"]) for i in good if "latencyMs" in primary[i]),
        "shadow": tuple(float(shadows[i]["latencyMs"]) for i in good if "latencyMs" in shadows[i]),
    }
    return ShadowComparison(
        model=model,
        primary=tuple(sorted({str(primary[i]["version"]) for i in both})),
        shadow=shadow,
        pairs=len(both),
        unpaired_primary=len(set(primary) - set(shadows)),
        unpaired_shadow=len(set(shadows) - set(primary)),
        failed=len(failed),
        outputs=outputs,
        latency_ms={k: _quantiles(v) for k, v in samples.items()},
        samples_ms=samples,
    )


def markdown(deployment: str, report: ShadowComparison, png: str | None = None) -> str:
    outputs = [
        {
            "name": o.name,
            "kind": o.kind,
            "agreement": f"{o.agreement:.2%}",
            "mean": "-" if o.mean_abs is None else f"{o.mean_abs:.4g}",
            "top": "-" if o.max_abs is None else f"{o.max_abs:.4g}",
        }
        for o in report.outputs
    ]
    return render(
        "markdown/shadow.md.j2",
        deployment=deployment,
        shadow=report.shadow,
        primary=", ".join(f"v{v}" for v in report.primary) or "-",
        pairs=report.pairs,
        failed=report.failed,
        unpaired_primary=report.unpaired_primary,
        unpaired_shadow=report.unpaired_shadow,
        outputs=outputs,
        latency=[(role, f"{p50:.3f}", f"{p99:.3f}") for role, (p50, p99) in report.latency_ms.items()],
        png=png,
    )


def plot(report: ShadowComparison, path: Path) -> None:
    """Latency of each version (histogram) and each output's agreement, as one PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (left, right) = plt.subplots(1, 2, figsize=(10, 4), dpi=110)
    for role, colour in (("primary", "#1f77b4"), ("shadow", "#ff7f0e")):
        values = report.samples_ms.get(role, ())
        if values:
            left.hist(values, bins=40, alpha=0.6, color=colour, label=f"{role} (p50 {np.median(values):.2f} ms)")
    left.set_xlabel("latency (ms)")
    left.set_ylabel("requests")
    left.set_title("latency of each version")
    left.legend()
    names = [o.name for o in report.outputs]
    right.bar(names, [o.agreement * 100 for o in report.outputs], color="#2ca02c")
    right.set_ylim(0, 100)
    right.set_ylabel("identical answers (%)")
    right.set_title(f"agreement over {report.pairs} pairs")
    fig.suptitle(f"{report.model}: shadow v{report.shadow}")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, metadata={"Software": None})  # no version stamp: the same records, the same bytes
    plt.close(fig)
