"""Batch scoring: whole datasets through one model version, exactly once, in parts."""

from .engine import default_workers, parts, prepare, score
from .jobs import Job, Part, PartResult, ScoringError, Settings, Summary

__all__ = [
    "Job",
    "Part",
    "PartResult",
    "ScoringError",
    "Settings",
    "Summary",
    "default_workers",
    "parts",
    "prepare",
    "score",
]
