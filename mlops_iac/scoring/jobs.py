"""The data of a batch scoring run: its settings, its parts, what a worker needs, what a part gives."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from ..errors import MlopsIacError
from ..serving.config import ModelConfig
from .features import InputMap
from .sources import Source

Progress = Callable[[int], None]
DEFAULT_PART_ROWS = 100_000


class ScoringError(MlopsIacError):
    """A run that stopped: too many rejects, or a part that failed. The manifest says where."""


@dataclass(frozen=True)
class Settings:
    batch_size: int = 10_000
    part_rows: int = DEFAULT_PART_ROWS  # rounded up to whole batches
    workers: int = 1
    threads: int | None = None  # onnxruntime threads per worker; default: the cores / workers
    error_threshold: int = 0  # rejected rows tolerated; -1: any number
    ids: tuple[str, ...] | None = None  # default: columns named id or *_id
    format: str = "parquet"
    resume: bool = False
    shard: int = 0  # this process scores parts index % shards == shard (an indexed Job's pod)
    shards: int = 1


@dataclass(frozen=True)
class Part:
    index: int
    input: int
    start: int
    stop: int

    @property
    def name(self) -> str:
        return f"part-{self.index:05d}"


@dataclass(frozen=True)
class Job:
    """Everything a worker needs to score a part; picklable (workers are processes)."""

    model: ModelConfig
    base: Path
    sources: tuple[Source, ...]
    maps: tuple[tuple[InputMap, ...], ...]
    ids: tuple[tuple[str, ...], ...]
    out: Path
    settings: Settings


@dataclass(frozen=True)
class PartResult:
    index: int
    file: str
    sha256: str
    rows_in: int
    rows_out: int
    rejects: int
    rejects_file: str | None
    rejects_sha256: str | None


@dataclass(frozen=True)
class Summary:
    rows_in: int
    rows_out: int
    rejects: int
    parts: int
    skipped: int  # parts already done (resumed)
    manifest: Path
    failed: str | None = None

    def markdown(self, model: str) -> str:
        from ..render import render

        return render(
            "markdown/score.md.j2",
            model=model,
            state=f"failed: {self.failed}" if self.failed else "complete",
            rows_in=self.rows_in,
            rows_out=self.rows_out,
            rejects=self.rejects,
            parts=self.parts,
            skipped=self.skipped,
        )


def summarize(done: dict[int, PartResult], mine: list[Part], skipped: int, path: Path, failed: str | None) -> Summary:
    """The counts of the finished parts among `mine` (this shard's)."""
    results = [done[p.index] for p in mine if p.index in done]
    return Summary(
        sum(r.rows_in for r in results),
        sum(r.rows_out for r in results),
        sum(r.rejects for r in results),
        len(mine),
        skipped,
        path,
        failed,
    )
