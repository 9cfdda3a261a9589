"""The drift check as a reviewer reads it: a Markdown table and a PSI bar chart per column, for
a pull request comment or a job summary (`mlops-iac monitor drift --report FOLDER`)."""

from __future__ import annotations

import math
from pathlib import Path

from ..fsutil import atomic_write
from ..render import render
from .columns import DriftResult


def ks_text(value: float, spec: str) -> str:
    return "-" if math.isnan(value) else format(value, spec)


def new_text(r: DriftResult) -> str:
    """A string column's values the baseline never had: distinct ones, the rows, the commonest."""
    if r.kind != "string":
        return ""
    if not r.new_categories:
        return "0"
    shown = ", ".join(repr(v) for v in r.new_examples[:3]) + (", ..." if r.new_categories > 3 else "")
    return f"{r.new_categories:,} in {r.new_rows:,} rows ({shown})"


def write_report(
    folder: Path, title: str, base: dict[str, object], results: list[DriftResult], records: int, threshold: float
) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    folder.mkdir(parents=True, exist_ok=True)
    ordered = sorted(results, key=lambda r: -1 if math.isnan(r.psi) else -r.psi)
    fig, ax = plt.subplots(figsize=(8, max(3.0, 0.3 * len(ordered))), dpi=110)
    ax.barh(
        [r.name for r in ordered][::-1],
        [0 if math.isnan(r.psi) else r.psi for r in ordered][::-1],
        color=["#d62728" if r.drifted else "#1f77b4" for r in ordered][::-1],
    )
    ax.axvline(threshold, color="black", linestyle="--", label=f"threshold {threshold:g}")
    ax.set_xlabel("population stability index")
    ax.set_title(f"{title}: drift per column ({records:,} records)")
    ax.legend()
    fig.tight_layout()
    fig.savefig(folder / "psi.png", metadata={"Software": None})
    plt.close(fig)
    rows = [
        {
            "name": r.name,
            "psi": f"{r.psi:.4f}",
            "ks": ks_text(r.ks, ".4f"),
            "pvalue": ks_text(r.ks_pvalue, ".2g"),
            "count": f"{r.count:,}",
            "new": new_text(r),
            "drift": "**drift**" if r.drifted else "",
        }
        for r in ordered[:200]
    ]
    text = render(
        "markdown/drift.md.j2",
        title=title,
        records=f"{records:,}",
        rows=base.get("rows"),
        threshold=format(threshold, "g"),
        results=rows,
    )
    atomic_write(folder / "report.md", text.encode())
