"""`deployments[].rollout`: how a canary is promoted on evidence, step by step, or rolled back."""

from __future__ import annotations

import itertools
import re
from typing import Annotated, Any, Literal

from pydantic import BeforeValidator, Field, WithJsonSchema
from pydantic_core import PydanticCustomError

from .types import SpecModel, invalid

_DURATION_RE = re.compile(r"^([0-9]+(?:\.[0-9]+)?)(ms|s|m|h)$")
_UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0}


def parse_duration(value: Any) -> float:
    """Seconds from "10m", "30s", "1.5h", "500ms" (or a plain number of seconds)."""
    if isinstance(value, int | float) and not isinstance(value, bool) and value > 0:
        return float(value)
    if isinstance(value, str):
        match = _DURATION_RE.match(value)
        if match and float(match.group(1)) > 0:
            return float(match.group(1)) * _UNITS[match.group(2)]
    raise invalid(value, 'expected a duration like "10m", "30s", "1h" or "500ms" (more than 0)')


Duration = Annotated[
    float,
    BeforeValidator(parse_duration),
    WithJsonSchema(
        {
            "anyOf": [
                {"type": "number", "exclusiveMinimum": 0},
                {"type": "string", "pattern": r"^[0-9]+(\.[0-9]+)?(ms|s|m|h)$"},
            ],
            "description": 'A duration: "10m", "30s", "1h", "500ms", or seconds',
        }
    ),
]


class Linear(SpecModel):
    step: int = Field(ge=1, le=100, description="Percent added to the canary at each step.")


class LinearSteps(SpecModel):
    linear: Linear


class ErrorRateGate(SpecModel):
    max: float = Field(ge=0, le=1, description="Highest share of failed requests (non-200) of the canary.")
    relative_to: Literal["stable"] | None = Field(
        None, description="Also compare with the stable version over the same window."
    )
    tolerance: float = Field(
        1.0,
        ge=1,
        description="With relativeTo: the canary may fail at most this many times the stable version's rate (or max).",
    )


class LatencyGate(SpecModel):
    max: float = Field(gt=0, description="Highest p99 latency of the canary, in milliseconds.")


class Gates(SpecModel):
    error_rate: ErrorRateGate | None = None
    p99_latency_ms: LatencyGate | None = None
    min_requests: int = Field(100, ge=1, description="Fewer canary requests in the window: hold, never promote.")


def parse_steps(value: Any) -> tuple[int, ...] | LinearSteps:
    """One error for either form (a union would report each branch's error separately)."""
    if isinstance(value, dict):
        step = value.get("linear", {}).get("step") if isinstance(value.get("linear"), dict) else None
        if (
            set(value) == {"linear"}
            and set(value["linear"]) == {"step"}
            and isinstance(step, int)
            and not isinstance(step, bool)
            and 1 <= step <= 100
        ):
            return LinearSteps(linear=Linear(step=step))
        raise invalid(value, "expected {linear: {step: N}} with N a percent from 1 to 100")
    if not isinstance(value, list | tuple) or not value:
        raise invalid(
            value, "expected a list of canary weights ending at 100, like [10, 50, 100], or {linear: {step: N}}"
        )
    if any(not isinstance(w, int) or isinstance(w, bool) or not 1 <= w <= 100 for w in value):
        raise _steps(value, "expected canary weights: whole percents from 1 to 100")
    if any(b <= a for a, b in itertools.pairwise(value)):
        raise _steps(value, "expected strictly increasing weights, like [10, 50, 100]")
    if value[-1] != 100:
        raise _steps(value, "expected the last step to be 100 (the canary takes all traffic)")
    return tuple(value)


Steps = Annotated[
    tuple[int, ...] | LinearSteps,
    BeforeValidator(parse_steps),
    WithJsonSchema(
        {
            "anyOf": [
                {"type": "array", "items": {"type": "integer", "minimum": 1, "maximum": 100}, "minItems": 1},
                {
                    "type": "object",
                    "properties": {
                        "linear": {
                            "type": "object",
                            "properties": {"step": {"type": "integer", "minimum": 1, "maximum": 100}},
                            "required": ["step"],
                            "additionalProperties": False,
                        }
                    },
                    "required": ["linear"],
                    "additionalProperties": False,
                },
            ],
            "description": "Canary weights, increasing, ending at 100; or {linear: {step: N}}",
        }
    ),
]


class Rollout(SpecModel):
    """A canary promoted on evidence: the last of `versions` is the canary, the other the stable."""

    steps: Steps = Field(
        (10, 50, 100), description="Canary weights in percent, increasing, ending at 100; or {linear: {step: N}}."
    )
    bake: Duration = Field(600.0, description="How long each step runs before it is judged.")
    gates: Gates = Gates()
    on_failure: Literal["rollback", "hold"] = Field(
        "rollback", description="rollback: the canary's weight goes to 0; hold: stay and report."
    )

    def weights(self) -> tuple[int, ...]:
        """The canary's weight at each step, the last always 100."""
        if isinstance(self.steps, LinearSteps):
            step = self.steps.linear.step
            return (*range(step, 100, step), 100)
        return self.steps


def _steps(value: Any, allowed: str) -> PydanticCustomError:
    return PydanticCustomError("mlops", "got {got}; {allowed}", {"got": str(list(value)), "allowed": allowed})
