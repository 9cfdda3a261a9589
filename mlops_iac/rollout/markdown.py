"""A rollout decision as Markdown: for the pull request, the job summary and the terminal."""

from __future__ import annotations

from typing import Any


def _num(value: Any, fmt: str) -> str:
    return "-" if value is None else format(value, fmt)


def markdown(deployment: str, record: dict[str, Any]) -> str:
    """`record` is what mlops.lock keeps as the rollout's `decision`."""
    ev, policy = record["evidence"], record["policy"]
    weights = " → ".join(f"{w}%" for w in policy["weights"])
    lines = [
        f"### Rollout of `{deployment}`: **{record['action']}**",
        "",
        f"Canary v{record['canary']} against stable v{record['stable']}: "
        f"{record['weightBefore']}% → **{record['weight']}%** (steps {weights}; bake {policy['bake']:g}s).",
        "",
    ]
    lines += [f"- {reason}" for reason in record["reasons"]]
    lines += [
        "",
        f"Evidence over {ev['windowS']:.0f}s from {ev['source']}:",
        "",
        "| version | requests | errors | error rate | p99 (ms) |",
        "|---|---:|---:|---:|---:|",
    ]
    for role in ("canary", "stable"):
        v = ev[role]
        rate = v["errors"] / v["requests"] if v["requests"] else None
        lines.append(
            f"| {role} v{record[role]} | {v['requests']:.0f} | {v['errors']:.0f} | "
            f"{_num(rate, '.2%')} | {_num(v['p99_ms'], '.1f')} |"
        )
    lines += ["", "| gate | canary | threshold | result |", "|---|---:|---:|---|"]
    for g in record["gates"]:
        pct = g["gate"] == "errorRate"
        value = _num(g["value"], ".2%" if pct else ".4g")
        threshold = format(g["threshold"], ".2%" if pct else ".4g")
        result = "pass" if g["passed"] else "**fail**"
        lines.append(f"| {g['gate']} | {value} | {threshold} | {result}{' (' + g['note'] + ')' if g['note'] else ''} |")
    if ev.get("queries"):
        lines += ["", "<details><summary>Queries</summary>", ""]
        lines += [f"- {name}: `{q}`" for name, q in sorted(ev["queries"].items())]
        lines += ["", "</details>"]
    return "\n".join(lines) + "\n"
