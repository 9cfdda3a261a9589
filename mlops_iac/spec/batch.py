"""`deployments[].batch`: a deployment that scores whole datasets instead of serving requests
(`kind: batch`): where the rows are, where the scores go, how often, how many pods."""

from __future__ import annotations

import re
from typing import Annotated, Any, Literal

from pydantic import BeforeValidator, Field

from .types import Name, SpecModel, invalid

_MACROS = ("@yearly", "@annually", "@monthly", "@weekly", "@daily", "@midnight", "@hourly")
_FIELD = r"(\*|[0-9A-Za-z]+(-[0-9A-Za-z]+)?)(/[0-9]+)?"
_CRON = re.compile(rf"^{_FIELD}(,{_FIELD})*$")
_RANGES = ((0, 59), (0, 23), (1, 31), (1, 12), (0, 7))
_NAMES = {
    3: ("jan", "feb", "mar", "apr", "may", "jun", "jul", "aug", "sep", "oct", "nov", "dec"),
    4: ("sun", "mon", "tue", "wed", "thu", "fri", "sat"),
}
CRON_HELP = (
    "expected a cron schedule of 5 fields (minute hour day-of-month month day-of-week, "
    'e.g. "0 2 * * *") or one of: ' + ", ".join(_MACROS)
)


def _in_range(token: str, i: int) -> bool:
    low, high = _RANGES[i]
    for part in re.split(r"[-,/]", token):
        if part in ("*", ""):
            continue
        if part.isdigit():
            if not low <= int(part) <= high:
                return False
        elif part.lower() not in _NAMES.get(i, ()):
            return False
    return True


def parse_cron(value: Any) -> str:
    """Kubernetes CronJob syntax: five fields, or a macro such as @daily."""
    if not isinstance(value, str):
        raise invalid(value, CRON_HELP)
    text = " ".join(value.split())
    if text in _MACROS:
        return text
    fields = text.split(" ")
    if len(fields) != 5 or not all(_CRON.match(f) and _in_range(f, i) for i, f in enumerate(fields)):
        raise invalid(value, CRON_HELP)
    return text


Cron = Annotated[str, BeforeValidator(parse_cron)]


class Batch(SpecModel):
    input: tuple[str, ...] = Field(
        min_length=1,
        description=(
            "Parquet, CSV, .npy or JSON-lines files or globs; on Kubernetes and Docker, paths inside "
            "the job's data volume (mounted at /data)."
        ),
    )
    output: str = Field(description="The folder for the output parts, the rejects and manifest.json.")
    schedule: Cron | None = Field(None, description="Cron schedule: a CronJob instead of a one-off Job.")
    parallelism: int = Field(1, ge=1, le=1000, description="Pods of the indexed Job; pod i scores parts i, i+N, ...")
    batch_size: int = Field(10_000, ge=1, le=10_000_000)
    part_rows: int = Field(100_000, ge=1)
    error_threshold: int = Field(0, ge=-1, description="Rejected rows tolerated; -1: any number.")
    format: Literal["parquet", "csv", "jsonl"] = "parquet"
    volume_claim: Name | None = Field(
        None,
        description=(
            "Kubernetes: the PersistentVolumeClaim mounted at /data (default: an emptyDir). Docker: "
            "a host folder or volume mounted at /data."
        ),
    )
