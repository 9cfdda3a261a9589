"""Batch scoring: whole datasets through one model version, exactly once, in parts."""

from .engine import Job, Part, PartResult, ScoringError, Settings, Summary, parts, prepare, score

__all__ = ["Job", "Part", "PartResult", "ScoringError", "Settings", "Summary", "parts", "prepare", "score"]
