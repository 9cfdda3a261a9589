"""The evidence of a rollout step: counters per version over the bake window.

Two sources. A server's own `/metrics` (local and Docker targets): the counters now minus
the counters at the step's start (kept in mlops.lock), summed over every server given, read
with prometheus-client's own text parser. Prometheus's HTTP API (Kubernetes targets):
`increase(...)` and `histogram_quantile(...)` over the window, the same series the alert
rules read.
"""

from __future__ import annotations

import json
import math
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterable, Mapping

from prometheus_client.parser import text_string_to_metric_families

from ..contract import API_KEY_ENV, PROMETHEUS_ENV
from ..errors import MlopsIacError
from ..lock import VersionCounts
from .decide import Evidence, VersionEvidence

REQUESTS = "mlops_requests"  # a counter: samples mlops_requests_total{model, version, status}
LATENCY = "mlops_request_seconds"  # a histogram: samples mlops_request_seconds_bucket{model, version, le}
TIMEOUT_S = 10.0


class Unreachable(MlopsIacError):
    """A server or Prometheus that did not answer at all; the command adds its step and what to do."""

    def __init__(self, url: str, reason: str) -> None:
        self.url, self.reason = url, reason
        super().__init__(f"cannot read {url}: {reason}")


def unreachable_hint(kind: str, deployment: str, *, metrics_urls: bool, prometheus: bool) -> str:
    """What to do when the evidence's source did not answer, for where it was looked for."""
    if prometheus:
        return f"is Prometheus running there? check --prometheus (or ${PROMETHEUS_ENV})"
    if metrics_urls:
        return "is the server running? check the --metrics-url given"
    if kind == "local":
        return (
            f"is the server running? start it with `mlops-iac serve --deployment {deployment}` (or pass --metrics-url)"
        )
    return "are its containers running? deploy them with `pulumi up` in stacks/, or pass --metrics-url URL"


def _reason(exc: OSError) -> str:
    """`Connection refused`, not `<urlopen error [Errno 111] Connection refused>`."""
    inner = exc.reason if isinstance(exc, urllib.error.URLError) and isinstance(exc.reason, OSError) else exc
    return str(inner.strerror or inner) if isinstance(inner, OSError) else str(inner)


def fetch(url: str, key: str | None = None) -> str:
    """GET `url` (with the API key as a bearer token when given); a clear error when it fails."""
    if not url.startswith(("http://", "https://")):
        raise MlopsIacError(f"{url}: expected an http:// or https:// URL")
    request = urllib.request.Request(url, headers={"Authorization": f"Bearer {key}"} if key else {})  # noqa: S310
    try:
        with urllib.request.urlopen(request, timeout=TIMEOUT_S) as response:  # noqa: S310 - URLs the user gave
            return str(response.read().decode("utf-8"))
    except urllib.error.HTTPError as exc:
        hint = f" (the main port needs the API key: set {API_KEY_ENV})" if exc.code == 401 else ""
        raise MlopsIacError(f"{url} answered {exc.code}{hint}") from None
    except OSError as exc:
        raise Unreachable(url, _reason(exc)) from None


def counts(text: str, model: str) -> dict[int, VersionCounts]:
    """Requests, failures and latency buckets per version of `model` in one /metrics page."""
    found: dict[int, dict[str, object]] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:  # by sample name: the family's name depends on the # TYPE line
            if sample.labels.get("model") != model or not sample.labels.get("version", "").isdigit():
                continue
            entry = found.setdefault(int(sample.labels["version"]), {"requests": 0.0, "errors": 0.0, "buckets": {}})
            if sample.name == f"{REQUESTS}_total":
                entry["requests"] = float(entry["requests"]) + sample.value  # type: ignore[arg-type]
                if sample.labels.get("status") != "200":
                    entry["errors"] = float(entry["errors"]) + sample.value  # type: ignore[arg-type]
            elif sample.name == f"{REQUESTS}_created":
                # The oldest child (status 200, made at start): a later first error must not look like a restart.
                entry["created"] = min(float(entry.get("created") or math.inf), sample.value)  # type: ignore[arg-type]
            elif sample.name == f"{LATENCY}_bucket":
                buckets: dict[str, float] = entry["buckets"]  # type: ignore[assignment]
                le = _bound(sample.labels["le"])
                buckets[le] = buckets.get(le, 0.0) + sample.value
    return {v: VersionCounts.model_validate(e) for v, e in found.items()}


def _bound(le: str) -> str:
    return "+Inf" if math.isinf(float(le)) else repr(float(le))


def total(pages: Iterable[Mapping[int, VersionCounts]]) -> dict[int, VersionCounts]:
    """The counters of several servers (one per version on Docker, replicas) added up."""
    out: dict[int, VersionCounts] = {}
    for page in pages:
        for version, c in page.items():
            have = out.get(version, VersionCounts())
            buckets = dict(have.buckets)
            for le, n in c.buckets.items():
                buckets[le] = buckets.get(le, 0.0) + n
            created = max((t for t in (have.created, c.created) if t is not None), default=None)
            out[version] = VersionCounts(
                requests=have.requests + c.requests, errors=have.errors + c.errors, buckets=buckets, created=created
            )
    return out


def delta(now: VersionCounts | None, then: VersionCounts | None) -> VersionCounts:
    """now - then; after a restart (counters created anew, or gone down) all of now is new."""
    now, then = now or VersionCounts(), then or VersionCounts()
    restarted = now.created is not None and then.created is not None and now.created != then.created
    if restarted or now.requests < then.requests or now.errors < then.errors:
        return now
    buckets = {le: max(0.0, n - then.buckets.get(le, 0.0)) for le, n in now.buckets.items()}
    return VersionCounts(requests=now.requests - then.requests, errors=now.errors - then.errors, buckets=buckets)


def quantile(q: float, buckets: Mapping[str, float]) -> float | None:
    """`histogram_quantile` as Prometheus computes it: linear inside the bucket, in seconds."""
    bounds = sorted((float(le), n) for le, n in buckets.items())
    if not bounds or bounds[-1][1] <= 0:
        return None
    rank = q * bounds[-1][1]
    lower, below = 0.0, 0.0
    for upper, count in bounds:
        if count >= rank:
            if math.isinf(upper):
                return lower  # Prometheus answers the highest finite bound
            inside = count - below
            return lower + (upper - lower) * ((rank - below) / inside if inside > 0 else 1.0)
        lower, below = upper, count
    return lower


def version_evidence(window: VersionCounts) -> VersionEvidence:
    p99 = quantile(0.99, window.buckets)
    return VersionEvidence(window.requests, window.errors, None if p99 is None else p99 * 1000)


def from_counters(
    now: Mapping[int, VersionCounts],
    then: Mapping[int, VersionCounts],
    stable: int,
    canary: int,
    window_s: float,
    source: str,
) -> Evidence:
    return Evidence(
        canary=version_evidence(delta(now.get(canary), then.get(canary))),
        stable=version_evidence(delta(now.get(stable), then.get(stable))),
        window_s=window_s,
        source=source,
    )


def prometheus_queries(model: str, selector: str, window_s: float) -> dict[str, str]:
    """The PromQL of the evidence, per version over the window (at least one second)."""
    matcher = f'{selector + "," if selector else ""}model="{model}"'
    window = f"{max(1, math.ceil(window_s))}s"
    return {
        "requests": f"sum by (version) (increase(mlops_requests_total{{{matcher}}}[{window}]))",
        "errors": f'sum by (version) (increase(mlops_requests_total{{{matcher},status!="200"}}[{window}]))',
        "p99": f"histogram_quantile(0.99, sum by (le, version) "
        f"(increase(mlops_request_seconds_bucket{{{matcher}}}[{window}])))",
    }


def query(prometheus: str, promql: str) -> dict[int, float]:
    """An instant query's value per `version` label."""
    url = f"{prometheus.rstrip('/')}/api/v1/query?" + urllib.parse.urlencode({"query": promql})
    data = json.loads(fetch(url))
    if data.get("status") != "success":
        raise MlopsIacError(f"Prometheus refused {promql!r}: {data.get('error', data)}")
    out = {}
    for row in data["data"]["result"]:
        version, value = row["metric"].get("version", ""), float(row["value"][1])
        if version.isdigit() and not math.isnan(value):
            out[int(version)] = value
    return out


def from_prometheus(prometheus: str, model: str, selector: str, stable: int, canary: int, window_s: float) -> Evidence:
    queries = prometheus_queries(model, selector, window_s)
    got = {name: query(prometheus, promql) for name, promql in queries.items()}

    def one(version: int) -> VersionEvidence:
        p99 = got["p99"].get(version)
        return VersionEvidence(
            got["requests"].get(version, 0.0), got["errors"].get(version, 0.0), None if p99 is None else p99 * 1000
        )

    return Evidence(canary=one(canary), stable=one(stable), window_s=window_s, source=prometheus, queries=queries)
