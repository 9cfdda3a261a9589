"""Progressive delivery: a canary promoted step by step on evidence, or rolled back.

`decide` is pure (policy, where the rollout stands, evidence in; a decision with its reasons
out); `evidence` reads the counters (a server's /metrics or Prometheus); `markdown` formats.
"""

from .decide import Decision, Evidence, GateResult, VersionEvidence, decide

__all__ = ["Decision", "Evidence", "GateResult", "VersionEvidence", "decide"]
