"""A rollout decision as Markdown: for the pull request, the job summary and the terminal."""

from __future__ import annotations

from typing import Any

from ..render import render

NO_SOURCE = "-"  # a record made without reading evidence (a start, an abort)


def _num(value: Any, fmt: str) -> str:
    return "-" if value is None else format(value, fmt)


def markdown(deployment: str, record: dict[str, Any]) -> str:
    """`record` is what mlops.lock keeps as the rollout's `decision`."""
    ev, policy = record["evidence"], record["policy"]
    versions = []
    for role in ("canary", "stable"):
        v = ev[role]
        rate = v["errors"] / v["requests"] if v["requests"] else None
        versions.append(
            {
                "role": role,
                "number": record[role],
                "requests": f"{v['requests']:.0f}",
                "errors": f"{v['errors']:.0f}",
                "rate": _num(rate, ".2%"),
                "p99": _num(v["p99_ms"], ".1f"),
            }
        )
    gates = []
    for g in record["gates"]:
        spec = ".2%" if g["gate"] == "errorRate" else ".4g"
        result = "pass" if g["passed"] else "**fail**"
        gates.append(
            {
                "gate": g["gate"],
                "value": _num(g["value"], spec),
                "threshold": format(g["threshold"], spec),
                "result": result + (f" ({g['note']})" if g["note"] else ""),
            }
        )
    return render(
        "markdown/rollout.md.j2",
        deployment=deployment,
        action=record["action"],
        canary=record["canary"],
        stable=record["stable"],
        weight_before=record["weightBefore"],
        weight=record["weight"],
        steps=" → ".join(f"{w}%" for w in policy["weights"]),
        bake=format(policy["bake"], "g"),
        reasons=record["reasons"],
        window=format(ev["windowS"], ".0f"),
        source="" if ev["source"] == NO_SOURCE else ev["source"],
        versions=versions,
        gates=gates,
        queries=sorted((ev.get("queries") or {}).items()),
    )
