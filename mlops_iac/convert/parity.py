"""The parity check: do the native model and its ONNX conversion give the same answers?"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any, Literal

import numpy as np

OutputKind = Literal["label", "float"]


@dataclass(frozen=True)
class OutputParity:
    name: str
    kind: OutputKind
    max_abs_error: float
    max_rel_error: float
    mismatches: int
    passed: bool


@dataclass(frozen=True)
class Parity:
    rows: int
    atol: float
    rtol: float
    outputs: tuple[OutputParity, ...]

    @property
    def passed(self) -> bool:
        return all(o.passed for o in self.outputs)

    def facts(self) -> dict[str, Any]:
        return {
            "passed": self.passed,
            "rows": self.rows,
            "atol": self.atol,
            "rtol": self.rtol,
            "outputs": {o.name: {k: v for k, v in asdict(o).items() if k != "name"} for o in self.outputs},
        }

    def describe(self) -> str:
        lines = []
        for o in self.outputs:
            verdict = "ok" if o.passed else "FAILED"
            if o.kind == "label":
                lines.append(f"  {o.name:<16} labels: {o.mismatches} of {self.rows} differ  {verdict}")
            else:
                lines.append(
                    f"  {o.name:<16} max abs error {o.max_abs_error:.3g}, max rel error "
                    f"{o.max_rel_error:.3g} (atol {self.atol:g}, rtol {self.rtol:g}; "
                    f"{o.mismatches} values outside)  {verdict}"
                )
        return "\n".join(lines)


def compare(
    expected: Sequence[np.ndarray],
    actual: Sequence[np.ndarray],
    names: Sequence[str],
    kinds: Sequence[OutputKind],
    atol: float,
    rtol: float,
) -> Parity:
    """Labels must match exactly; numbers within |a - e| <= atol + rtol * |e|."""
    outputs = []
    rows = int(np.asarray(expected[0]).shape[0]) if expected else 0
    for want, got, name, kind in zip(expected, actual, names, kinds, strict=True):
        outputs.append(_compare_one(np.asarray(want), np.asarray(got), name, kind, atol, rtol))
    return Parity(rows=rows, atol=atol, rtol=rtol, outputs=tuple(outputs))


def _compare_one(
    want: np.ndarray, got: np.ndarray, name: str, kind: OutputKind, atol: float, rtol: float
) -> OutputParity:
    if want.size != got.size:
        return OutputParity(name, kind, float("inf"), float("inf"), max(want.size, got.size), False)
    want, got = want.reshape(-1), got.reshape(-1)
    if kind == "label":
        mismatches = int(np.sum(want.astype(str) != got.astype(str)))
        return OutputParity(name, kind, 0.0, 0.0, mismatches, mismatches == 0)
    want64, got64 = want.astype(np.float64), got.astype(np.float64)
    diff = np.abs(got64 - want64)
    if not np.all(np.isfinite(got64) == np.isfinite(want64)):
        return OutputParity(name, kind, float("inf"), float("inf"), int(np.sum(~np.isfinite(got64))), False)
    diff = np.where(np.isfinite(diff), diff, 0.0)
    # Relative error only where it means something: next to 0 any difference is "infinite".
    significant = np.abs(want64) > max(atol, np.finfo(np.float32).eps)
    rel = np.where(significant, diff / np.where(significant, np.abs(want64), 1.0), 0.0)
    outside = int(np.sum(diff > atol + rtol * np.abs(want64)))
    return OutputParity(name, kind, float(diff.max(initial=0.0)), float(rel.max(initial=0.0)), outside, outside == 0)
