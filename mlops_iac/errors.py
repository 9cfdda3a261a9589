"""The error types of mlops-iac.

Every error a user can cause derives from `MlopsIacError`; the CLI prints those without a
traceback. Configuration problems are `Problem`s, collected so that the user sees all of
them at once, and raised together as one `ConfigError`.
"""

from __future__ import annotations

import difflib
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Literal

Severity = Literal["error", "warning"]


class MlopsIacError(Exception):
    """Root of every error that the user, not a bug, can cause."""


@dataclass(frozen=True, order=True)
class Problem:
    """One finding about a file: where it is, what was found and what is allowed."""

    file: str
    line: int
    column: int
    path: str
    message: str
    allowed: str = ""
    severity: Severity = field(default="error", compare=False)

    def __str__(self) -> str:
        where = f"{self.file}:{self.line}:{self.column}"
        what = f"{self.message}; {self.allowed}" if self.allowed else self.message
        prefix = "warning: " if self.severity == "warning" else ""
        subject = f"{self.path}: " if self.path else ""
        return f"{where}: {prefix}{subject}{what}"


class ConfigError(MlopsIacError):
    """One or more problems in a file the user wrote (or the lock the tool wrote)."""

    def __init__(self, problems: Iterable[Problem]) -> None:
        self.problems: tuple[Problem, ...] = tuple(sorted(problems))
        if not self.problems:
            raise ValueError("ConfigError needs at least one problem")
        super().__init__("\n".join(str(p) for p in self.problems))

    @property
    def first(self) -> Problem:
        return self.problems[0]


class RegistryError(MlopsIacError):
    """The registry refused an operation or found itself inconsistent."""


class PlanError(MlopsIacError):
    """The resolved spec and the lock do not give enough facts to plan a deployment."""


class WriterError(MlopsIacError):
    """A generated file could not be written safely."""


def only_errors(problems: Sequence[Problem]) -> list[Problem]:
    return [p for p in problems if p.severity == "error"]


def did_you_mean(got: object, choices: Iterable[object]) -> str:
    """` (did you mean 'x'?)` for a near miss of one of `choices`, else nothing."""
    close = difflib.get_close_matches(str(got), [str(c) for c in choices], n=1, cutoff=0.6)
    return f" (did you mean {close[0]!r}?)" if close else ""


def one_line(exc: BaseException) -> str:
    """What an OS or library error says, on one line: pyarrow's messages span several
    ("Couldn't deserialize thrift: ...\\nDeserializing page header failed."), and the CLI
    prints an error as one line."""
    text = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
    return "; ".join(line.strip() for line in text.splitlines() if line.strip()) or type(exc).__name__
