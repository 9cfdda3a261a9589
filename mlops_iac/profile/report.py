"""The profile as a reviewer reads it: Markdown for a pull request comment and the job
summary, and PNG plots. Bounded: a whole profile stays far under GitHub's 65,536-character
comment limit (tables are capped; the note says what was left out)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ..render import render
from .recommend import Recommendation

MAX_ROWS = 60
COLOURS = ("#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#ff7f0e", "#8c564b", "#17becf", "#7f7f7f")
LIMIT = 60_000


def markdown(
    title: str, figures: dict[str, Any], rec: Recommendation, slo_ms: float, target_rps: float | None, plots: list[str]
) -> str:
    mem = figures["memory"]
    text = render(
        "markdown/profile.md.j2",
        max_rows=MAX_ROWS,
        title=title,
        machine=figures["machine"],
        quick=bool(figures.get("quick")),
        slo_met=rec.slo_met,
        recommendation=[
            [
                f"{rec.cpu_millis}m (limit {rec.cpu_limit_millis}m)",
                f"{rec.memory_bytes // 2**20}Mi (limit {(rec.memory_limit_bytes or 0) // 2**20}Mi)",
                str(rec.threads),
                f"max {rec.max_batch_size}" if rec.max_batch_size > 1 else "off",
                f"{rec.replicas_min}-{rec.replicas_max}",
                f"{rec.capacity_rps or 0:,.0f} req/s",
                f"{slo_ms:g} ms",
                f"{target_rps:g} req/s" if target_rps else "-",
            ]
        ],
        note=rec.note,
        in_process=[
            [
                str(c["batch"]),
                str(c["threads"]),
                f"{c['p50Ms']:.3f}",
                f"{c['p95Ms']:.3f}",
                f"{c['p99Ms']:.3f}",
                f"{c['spreadMs'][0]:.3f}-{c['spreadMs'][1]:.3f}",
                f"{c['rowsPerSecond']:,.0f}",
            ]
            for c in figures["inProcess"]
        ],
        memory=f"{mem['peakBytes'] / 2**20:.0f} MiB ({mem['modelBytes'] / 2**20:.0f} MiB over onnxruntime's "
        f"{mem['baselineBytes'] / 2**20:.0f} MiB)",
        http=[
            [
                "on" if r["batching"] else "off",
                str(r["concurrency"]),
                f"{r['rps']:,.0f}",
                f"{r['p50Ms']:.2f}",
                f"{r['p99Ms']:.2f}",
                f"{r['cpuCores']:.2f}",
                f"{r['peakRssBytes'] / 2**20:.0f}",
                str(r.get("errors", 0)),
            ]
            for r in figures["http"]
        ],
        plots=plots,
    )
    if len(text) > LIMIT:  # cannot happen with the caps above; kept as the last guard
        text = text[: LIMIT - 200] + "\n\n_The report was cut at 60,000 characters._\n"
    return text


def plots(figures: dict[str, Any], folder: Path, title: str) -> list[str]:
    """latency-vs-batch.png, latency-vs-concurrency.png, throughput-vs-cores.png."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    folder.mkdir(parents=True, exist_ok=True)
    written = []
    grid = figures["inProcess"]
    fig, ax = plt.subplots(figsize=(7, 4.5), dpi=110)
    for colour, threads in zip(COLOURS, sorted({c["threads"] for c in grid}), strict=False):
        cells = sorted((c for c in grid if c["threads"] == threads), key=lambda c: c["batch"])
        ax.plot(
            [c["batch"] for c in cells],
            [c["p99Ms"] for c in cells],
            "o-",
            color=colour,
            label=f"p99, {threads} thread(s)",
        )
        ax.plot(
            [c["batch"] for c in cells],
            [c["p50Ms"] for c in cells],
            "x--",
            color=colour,
            label=f"p50, {threads} thread(s)",
        )
    _finish(
        ax,
        f"{title}: latency against batch size (in process)",
        "batch size",
        "latency (ms)",
        ticks=sorted({c["batch"] for c in grid}),
    )
    written.append(_save(fig, folder / "latency-vs-batch.png"))
    fig, ax = plt.subplots(figsize=(7, 4.5), dpi=110)
    for colour, batching in zip(COLOURS, (False, True), strict=False):
        rows = sorted((r for r in figures["http"] if r["batching"] == batching), key=lambda r: r["concurrency"])
        if rows:
            label = "batching on" if batching else "batching off"
            ax.plot(
                [r["concurrency"] for r in rows], [r["p99Ms"] for r in rows], "o-", color=colour, label=f"p99, {label}"
            )
            ax.plot(
                [r["concurrency"] for r in rows], [r["p50Ms"] for r in rows], "x--", color=colour, label=f"p50, {label}"
            )
    _finish(
        ax,
        f"{title}: latency against concurrency (HTTP)",
        "concurrent requests",
        "latency (ms)",
        ticks=sorted({r["concurrency"] for r in figures["http"]}),
    )
    written.append(_save(fig, folder / "latency-vs-concurrency.png"))
    fig, ax = plt.subplots(figsize=(7, 4.5), dpi=110)
    for colour, batch in zip(COLOURS, sorted({c["batch"] for c in grid}), strict=False):
        cells = sorted((c for c in grid if c["batch"] == batch), key=lambda c: c["threads"])
        ax.plot(
            [c["threads"] for c in cells],
            [c["rowsPerSecond"] for c in cells],
            "o-",
            color=colour,
            label=f"batch {batch}",
        )
    ax.set_yscale("log")  # batch 1 and batch 32 differ by orders of magnitude
    _finish(
        ax,
        f"{title}: throughput against cores (in process)",
        "intra-op threads (cores)",
        "rows per second (log scale)",
        ticks=sorted({c["threads"] for c in grid}),
        log=False,
    )
    written.append(_save(fig, folder / "throughput-vs-cores.png"))
    return written


def _finish(ax: Any, title: str, xlabel: str, ylabel: str, ticks: list[int], log: bool = True) -> None:
    """Titles, a log x axis labelled with the measured values themselves (not 2^n), a grid."""
    from matplotlib.ticker import FixedLocator, NullLocator

    ax.set_title(title, fontsize=11)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    if log and len(ticks) > 1:
        ax.set_xscale("log", base=2)
    ax.xaxis.set_major_locator(FixedLocator(ticks))
    ax.xaxis.set_minor_locator(NullLocator())
    ax.set_xticklabels([str(t) for t in ticks])
    if ax.get_yscale() == "linear":
        ax.set_ylim(bottom=0)
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=8)


def _save(fig: Any, path: Path) -> str:
    fig.tight_layout()
    fig.savefig(path, metadata={"Software": None})  # no timestamp or version in the file
    import matplotlib.pyplot as plt

    plt.close(fig)
    return path.name
