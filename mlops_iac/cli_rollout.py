"""`mlops-iac rollout status|step|abort DEPLOYMENT`: a canary carried through its policy's steps.

Each step reads the evidence over the bake window, decides (mlops_iac.rollout.decide), records
the decision, its evidence and the canary's new weight in mlops.lock, and prints it as Markdown.
`synth` and `serve` then apply the lock's weights.
"""

from __future__ import annotations

import math
import os
import re
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

import click

from .console import file_option
from .contract import API_KEY_ENV, PROMETHEUS_ENV
from .errors import MlopsIacError
from .lock import Lock, RolloutFacts, VersionCounts, update_lock
from .resolve import ResolvedDeployment, Workspace, load
from .rollout import Decision, Evidence, decide
from .rollout import evidence as sources
from .rollout.decide import abort_refusal
from .rollout.markdown import NO_SOURCE, markdown
from .spec.rollout import Rollout
from .spec.targets import DockerTarget, KubernetesTarget, LocalTarget


class Source:
    """Where a deployment's evidence comes from: its servers' /metrics, or Prometheus."""

    def __init__(
        self,
        ws: Workspace,
        dep: ResolvedDeployment,
        urls: tuple[str, ...],
        prometheus: str | None,
        selector: str | None,
    ) -> None:
        self.dep = dep
        target = ws.resolved.target(dep.target).spec
        self.prometheus = prometheus or (os.environ.get(PROMETHEUS_ENV) if not urls else None)
        self.urls = urls or (() if self.prometheus else _metrics_urls(target, dep))
        if not self.urls and not self.prometheus:
            raise MlopsIacError(
                f"{dep.name} runs on a target of kind {target.kind}: pass --prometheus URL (or set "
                f"{PROMETHEUS_ENV}) or --metrics-url URL"
            )
        namespace = target.namespace_name if isinstance(target, KubernetesTarget) else ""
        from .model_manifests import series_selector

        self.selector = (
            selector if selector is not None else (series_selector(namespace, dep.model) if namespace else "")
        )
        self.key = os.environ.get(API_KEY_ENV) if dep.auth == "key" else None
        self.hint = sources.unreachable_hint(
            target.kind, dep.name, metrics_urls=bool(urls), prometheus=bool(self.prometheus)
        )

    def counters(self, command: str) -> dict[int, VersionCounts]:
        if self.prometheus:
            return {}  # Prometheus keeps the history itself
        try:
            return sources.total(sources.counts(sources.fetch(url, self.key), self.dep.model) for url in self.urls)
        except sources.Unreachable as exc:
            raise MlopsIacError(f"{command} {self.dep.name}: reading the evidence: {exc}; {self.hint}") from None

    def evidence(self, facts: RolloutFacts, now: float, counters: dict[int, VersionCounts]) -> Evidence:
        window = max(0.0, now - facts.started)
        if self.prometheus:
            try:
                return sources.from_prometheus(
                    self.prometheus, self.dep.model, self.selector, facts.stable, facts.canary, window
                )
            except sources.Unreachable as exc:
                raise MlopsIacError(f"rollout {self.dep.name}: querying Prometheus: {exc}; {self.hint}") from None
        return sources.from_counters(counters, facts.snapshot, facts.stable, facts.canary, window, ", ".join(self.urls))


def _metrics_urls(target: Any, dep: ResolvedDeployment) -> tuple[str, ...]:
    if isinstance(target, LocalTarget):
        return (f"http://{target.host}:{target.port}/metrics",)
    if isinstance(target, DockerTarget):
        match = re.match(r"^(?:tcp|ssh)://(?:[^@/]+@)?([^:/]+)", target.host)
        host = match.group(1) if match else "127.0.0.1"
        return tuple(f"http://{host}:{target.port + (v.number or 1) - 1}/metrics" for v in dep.versions)
    return ()


def _deployment(ws: Workspace, name: str) -> tuple[ResolvedDeployment, Rollout, int, int]:
    known = {d.name: d for d in ws.resolved.deployments}
    if name not in known:
        raise MlopsIacError(f"unknown deployment {name!r}; deployments: {', '.join(known) or 'none'}")
    index = [d.name for d in ws.resolved.deployments].index(name)
    policy = ws.spec.deployments[index].rollout
    dep = known[name]
    if policy is None:
        raise MlopsIacError(f"{name} has no rollout policy in {ws.file}; add deployments[{index}].rollout")
    stable, canary = (v.number for v in dep.served)
    if stable is None or canary is None:
        raise MlopsIacError(f"{name}: both versions must be pinned in mlops.lock (run `mlops-iac lock sync`)")
    return dep, policy, stable, canary


def _record(
    action: str,
    facts: RolloutFacts,
    before: int,
    policy: Rollout,
    evidence: Evidence | None,
    decision: Decision | None,
    reasons: tuple[str, ...],
    now: float,
) -> dict[str, Any]:
    ev = (
        asdict(evidence)
        if evidence
        else {
            "canary": {"requests": 0, "errors": 0, "p99_ms": None},
            "stable": {"requests": 0, "errors": 0, "p99_ms": None},
            "window_s": 0.0,
            "source": NO_SOURCE,
            "queries": {},
        }
    )
    return {
        "action": action,
        "stable": facts.stable,
        "canary": facts.canary,
        "weightBefore": before,
        "weight": facts.weight,
        "step": facts.step,
        "reasons": list(reasons),
        "at": round(now, 3),
        "gates": [asdict(g) for g in decision.gates] if decision else [],
        "evidence": {
            "canary": ev["canary"],
            "stable": ev["stable"],
            "windowS": ev["window_s"],
            "source": ev["source"],
            "queries": ev["queries"],
        },
        "policy": {
            "weights": list(policy.weights()),
            "bake": policy.bake,
            "gates": policy.gates.model_dump(mode="json", by_alias=True, exclude_none=True),
            "onFailure": policy.on_failure,
        },
    }


def advance(
    lock: Lock,
    name: str,
    policy: Rollout,
    stable: int,
    canary: int,
    source: Source,
    now: float,
    counters: dict[int, VersionCounts],
    *,
    record: bool,
) -> tuple[RolloutFacts, dict[str, Any]]:
    """The rollout's facts after one step (pure but for the counters and clock it is given)."""
    facts = lock.rollouts.get(name)
    if facts is None or (facts.stable, facts.canary) != (stable, canary):
        first = policy.weights()[0]
        facts = RolloutFacts(stable=stable, canary=canary, weight=first, started=now, snapshot=counters)
        why = f"rollout started: v{canary} takes {first}% for {policy.bake:g}s, then it is judged"
        # Before a start, synth and serve already give the canary the first step (see
        # resolve): the server sent it that share, so the start moves nothing.
        return facts, _record("start", facts, first, policy, None, None, (why,), now)
    if facts.state != "progressing":
        return facts, facts.decision
    evidence = source.evidence(facts, now, counters)
    decision = decide(policy, facts.step, now - facts.started, evidence)
    update: dict[str, Any] = {"weight": decision.weight, "step": decision.step}
    if decision.action == "advance":
        update |= {"started": now, "snapshot": counters}
    elif decision.action == "promote":
        update |= {"state": "promoted"}
    elif decision.action == "rollback":
        update |= {"state": "rolled-back"}
    new = facts.model_copy(update=update) if record or decision.action != "hold" else facts
    return new, _record(decision.action, new, facts.weight, policy, evidence, decision, decision.reasons, now)


@click.group()
def rollout() -> None:
    """Carry a canary through its rollout policy: judge, advance, promote or roll back."""


def _options(func: Any) -> Any:
    func = click.option(
        "--metrics-url",
        "urls",
        multiple=True,
        help="A server's /metrics to read (repeatable; default: the target's servers).",
    )(func)
    func = click.option(
        "--prometheus", default=None, help=f"Prometheus's URL (Kubernetes targets; default ${PROMETHEUS_ENV})."
    )(func)
    func = click.option("--selector", default=None, help="PromQL label matchers of the deployment's series.")(func)
    func = click.option(
        "--out",
        type=click.Path(dir_okay=False, path_type=Path),
        default=None,
        help="Also append the Markdown to this file (e.g. $GITHUB_STEP_SUMMARY).",
    )(func)
    return file_option(func)


def _run(
    file: Path,
    name: str,
    urls: tuple[str, ...],
    prometheus: str | None,
    selector: str | None,
    out: Path | None,
    *,
    write: bool,
) -> None:
    ws = load(file)
    dep, policy, stable, canary = _deployment(ws, name)
    if not write and name not in ws.lock.rollouts:
        raise MlopsIacError(f"{name}: no rollout has started; `mlops-iac rollout step {name}` starts it")
    facts = ws.lock.rollouts.get(name)
    if (
        not write
        and facts is not None
        and (facts.stable, facts.canary) == (stable, canary)
        and facts.state != "progressing"
        and facts.decision
    ):
        _emit(markdown(name, facts.decision), out)  # settled: the recorded decision, no evidence to read
        return
    source = Source(ws, dep, urls, prometheus, selector)
    counters = source.counters("rollout step" if write else "rollout status")
    now = time.time()
    if write:
        holder: dict[str, Any] = {}

        def change(lock: Lock) -> Lock:
            facts, holder["record"] = advance(lock, name, policy, stable, canary, source, now, counters, record=True)
            return lock.with_rollout(name, facts.model_copy(update={"decision": holder["record"]}))

        update_lock(ws.lock_path, change)
        text = markdown(name, holder["record"])
    else:
        _, rec = advance(ws.lock, name, policy, stable, canary, source, now, counters, record=False)
        text = markdown(name, rec)
    _emit(text, out)


def _emit(text: str, out: Path | None) -> None:
    click.echo(text, nl=False)
    if out is not None:
        with open(out, "a", encoding="utf-8") as handle:
            handle.write(text)


@rollout.command("status")
@click.argument("deployment")
@_options
def status(
    deployment: str, file: Path, urls: tuple[str, ...], prometheus: str | None, selector: str | None, out: Path | None
) -> None:
    """Judge the current step on the evidence so far; change nothing."""
    _run(file, deployment, urls, prometheus, selector, out, write=False)


@rollout.command("step")
@click.argument("deployment")
@_options
def step(
    deployment: str, file: Path, urls: tuple[str, ...], prometheus: str | None, selector: str | None, out: Path | None
) -> None:
    """Start the rollout, or judge its current step and record the decision in mlops.lock: advance
    (after the bake, every gate passing), promote (the last step), hold (baking, or too little
    traffic) or roll back (a gate failed). Then apply the lock's weights (synth, pulumi up, serve)."""
    _run(file, deployment, urls, prometheus, selector, out, write=True)


def _listing(ws: Workspace, target: str | None, now: float) -> list[tuple[str, str, int, float]]:
    """(deployment, state, canary weight, seconds until its next judgement) of every rollout."""
    rows = []
    for index, dep in enumerate(ws.resolved.deployments):
        policy = ws.spec.deployments[index].rollout
        if policy is None or (target is not None and dep.target != target):
            continue
        stable, canary = (v.number for v in dep.served)
        facts = ws.lock.rollouts.get(dep.name)
        if facts is None or (facts.stable, facts.canary) != (stable, canary):
            rows.append((dep.name, "not-started", policy.weights()[0], 0.0))  # what synth applies now
            continue
        # Judged every fifth of the bake (at least each second): a failing canary is rolled back
        # as soon as it has served minRequests, not only at the end of its bake.
        poll = max(1.0, policy.bake / 5)
        left = facts.started + policy.bake - now
        wait = min(left, poll) if left > 0 else poll
        rows.append((dep.name, facts.state, facts.weight, math.ceil(wait * 10) / 10))
    return rows


@rollout.command("list")
@file_option
@click.option("--target", default=None, help="Only the deployments on this target.")
@click.option(
    "--state",
    "states",
    multiple=True,
    type=click.Choice(["not-started", "progressing", "promoted", "rolled-back", "aborted"]),
    help="Only rollouts in this state (repeatable).",
)
def list_(file: Path, target: str | None, states: tuple[str, ...]) -> None:
    """Print, one per line and tab-separated, each rollout's deployment, state, canary weight and
    seconds until its next judgement is due (what the reusable workflow's loop reads)."""
    ws = load(file)
    known = {t.name for t in ws.resolved.targets}
    if target is not None and target not in known:
        raise MlopsIacError(f"unknown target {target!r}; targets: {', '.join(sorted(known)) or 'none'}")
    for name, state, weight, wait in _listing(ws, target, time.time()):
        if not states or state in states:
            click.echo(f"{name}\t{state}\t{weight}\t{wait:g}")


@rollout.command("abort")
@click.argument("deployment")
@file_option
@click.option("--reason", default="aborted by hand", show_default=True, help="Recorded with the decision.")
@click.option(
    "--out",
    type=click.Path(dir_okay=False, path_type=Path),
    default=None,
    help="Also append the Markdown to this file.",
)
@click.option(
    "--revert-promoted",
    is_flag=True,
    help="Abort a promoted rollout too: all traffic goes back from the canary to the stable version.",
)
def abort(deployment: str, file: Path, reason: str, out: Path | None, revert_promoted: bool) -> None:
    """Set the canary's weight to 0 now and stop the rollout. A promoted canary serves 100%:
    taking it back to 0 is a revert, done only with --revert-promoted."""
    ws = load(file)
    _, policy, stable, canary = _deployment(ws, deployment)
    holder: dict[str, Any] = {}

    def change(lock: Lock) -> Lock:
        facts = lock.rollouts.get(deployment)
        current = facts is not None and (facts.stable, facts.canary) == (stable, canary)
        refusal = abort_refusal(deployment, facts.state, stable, canary) if current and facts else None
        if refusal is not None and not revert_promoted:
            raise MlopsIacError(refusal)
        before = facts.weight if current and facts is not None else 0
        new = RolloutFacts(
            stable=stable,
            canary=canary,
            state="aborted",
            weight=0,
            started=time.time(),
            step=facts.step if facts else 0,
        )
        holder["record"] = _record("abort", new, before, policy, None, None, (reason,), new.started)
        return lock.with_rollout(deployment, new.model_copy(update={"decision": holder["record"]}))

    update_lock(ws.lock_path, change)
    _emit(markdown(deployment, holder["record"]), out)
