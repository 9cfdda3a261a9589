"""The decision of one rollout step. Pure: no clock, no network, no files."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any, Literal

from ..spec.rollout import Rollout

Action = Literal["advance", "promote", "hold", "rollback"]


@dataclass(frozen=True)
class VersionEvidence:
    """One version over the window: requests answered, requests failed (not 200), p99 in ms."""

    requests: float
    errors: float
    p99_ms: float | None

    @property
    def error_rate(self) -> float | None:
        return self.errors / self.requests if self.requests > 0 else None


@dataclass(frozen=True)
class Evidence:
    canary: VersionEvidence
    stable: VersionEvidence
    window_s: float  # how long the window was: from the step's start to now
    source: str  # where the numbers come from (URLs, or Prometheus and its queries)
    queries: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class GateResult:
    gate: str
    value: float | None
    threshold: float
    passed: bool
    note: str = ""


@dataclass(frozen=True)
class Decision:
    action: Action
    weight: int  # the canary's weight after the decision
    step: int  # the step index after the decision
    reasons: tuple[str, ...]
    gates: tuple[GateResult, ...]

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def gate_results(policy: Rollout, evidence: Evidence) -> tuple[GateResult, ...]:
    """Every configured gate, judged on the canary's numbers (the stable's where relative)."""
    gates, canary, stable = policy.gates, evidence.canary, evidence.stable
    out = [GateResult("minRequests", canary.requests, gates.min_requests, canary.requests >= gates.min_requests)]
    if gates.error_rate is not None:
        rule = gates.error_rate
        bound, note = rule.max, ""
        if rule.relative_to == "stable":
            if stable.error_rate is None:
                note = "the stable version served nothing in the window: judged on max alone"
            elif stable.error_rate * rule.tolerance > rule.max:
                # Errors the stable version shares (a bad client, a dependency down) are not the canary's.
                bound = stable.error_rate * rule.tolerance
                note = f"stable fails {stable.error_rate:.2%}; the bound is {rule.tolerance:g} times that"
        rate = canary.error_rate
        out.append(GateResult("errorRate", rate, bound, rate is not None and rate <= bound, note))
    if gates.p99_latency_ms is not None:
        p99 = canary.p99_ms
        out.append(
            GateResult(
                "p99LatencyMs", p99, gates.p99_latency_ms.max, p99 is not None and p99 <= gates.p99_latency_ms.max
            )
        )
    return tuple(out)


def decide(policy: Rollout, step: int, elapsed_s: float, evidence: Evidence) -> Decision:
    """Advance, promote, hold or roll back the canary at `step` (an index into the policy's
    weights) after `elapsed_s` seconds of the step's bake, on `evidence` over that time.

    A failing gate rolls back as soon as the canary has `minRequests` (a bad canary is not left
    baking); a canary is promoted only after the full bake with every gate passing, and never
    on less than `minRequests`.
    """
    weights = policy.weights()
    weight = weights[step]
    results = gate_results(policy, evidence)
    enough = results[0].passed
    failed = [r for r in results[1:] if not r.passed]
    if enough and failed:
        reasons = tuple(_failure(r) for r in failed)
        if policy.on_failure == "hold":
            return Decision("hold", weight, step, (*reasons, "onFailure is hold: the canary stays"), results)
        return Decision("rollback", 0, step, reasons, results)
    if not enough:
        return Decision(
            "hold",
            weight,
            step,
            (
                f"too little traffic: the canary served {evidence.canary.requests:g} requests in "
                f"{evidence.window_s:.0f}s; at least {policy.gates.min_requests} are needed to judge it",
            ),
            results,
        )
    if elapsed_s < policy.bake:
        return Decision(
            "hold",
            weight,
            step,
            (f"baking: {elapsed_s:.0f}s of {policy.bake:g}s at {weight}%; every gate passes so far",),
            results,
        )
    nxt = min(step + 1, len(weights) - 1)
    action: Action = "promote" if weights[nxt] == 100 else "advance"
    return Decision(
        action,
        weights[nxt],
        nxt,
        (
            f"every gate passed over {evidence.window_s:.0f}s at {weight}%: "
            + ("promote the canary to 100%" if action == "promote" else f"advance to {weights[nxt]}%"),
        ),
        results,
    )


def _failure(result: GateResult) -> str:
    if result.gate == "errorRate":
        shown = "no answers" if result.value is None else f"{result.value:.2%}"
        return f"error rate {shown} is over {result.threshold:.2%}" + (f" ({result.note})" if result.note else "")
    shown = "unknown" if result.value is None else f"{result.value:.1f} ms"
    return f"p99 latency {shown} is over {result.threshold:g} ms"


def abort_refusal(deployment: str, state: str, stable: int, canary: int) -> str | None:
    """Why an abort would do harm, or None: a promoted canary serves every request, so taking
    it to 0% is not stopping a rollout but reverting a release, which must be asked for."""
    if state != "promoted":
        return None
    return (
        f"{deployment}: the rollout was promoted: v{canary} serves 100% and v{stable} 0%; an abort now "
        f"would move all traffic back to v{stable}. To revert the release, rerun with --revert-promoted, "
        "or change the deployment's versions in mlops.yaml"
    )
