"""The Markdown reports come from templates (templates/markdown/): a value that carries a `|` or a
line break stays inside its table cell, whatever table it lands in."""

from __future__ import annotations

from pathlib import Path

import pytest

from mlops_iac.monitoring.drift import DriftResult
from mlops_iac.monitoring.report import write_report
from mlops_iac.monitoring.shadow import markdown, pair

AWKWARD = "a|b\nc"  # a column or output name as a user's data may have it
CELL = "a&#124;b<br>c"  # the same text as one cell: the pipe as a character reference, the break as <br>


def table(text: str, header: str) -> list[list[str]]:
    """The cells of the rows of the table under `header` (a GFM table ends at its first non-row line)."""
    lines = text.splitlines()
    start = lines.index(header) + 2
    rows = []
    for line in lines[start:]:
        if not line.startswith("|"):
            break
        assert line.endswith("|"), line
        rows.append([cell.strip() for cell in line[1:-1].split("|")])
    return rows


def test_a_drift_column_with_a_pipe_and_a_newline_is_one_cell(tmp_path: Path) -> None:
    results = [
        DriftResult(AWKWARD, 0.5, 0.1, 0.01, 1000, True, "string", 2, 40, [AWKWARD, "x"]),
        DriftResult("plain", 0.01, 0.02, 0.9, 1000, False),
    ]
    write_report(tmp_path, "iris", {"rows": 150}, results, 1000, 0.2)
    rows = table(
        (tmp_path / "report.md").read_text(), "| column | PSI | KS | KS p-value | values | new categories | drift |"
    )
    assert rows == [  # the new values are shown as repr: the newline is already the two characters \n
        [CELL, "0.5000", "0.1000", "0.01", "1,000", "2 in 40 rows ('a&#124;b\\nc', 'x')", "**drift**"],
        ["plain", "0.0100", "0.0200", "0.9", "1,000", "", ""],
    ]


def test_a_shadow_output_with_a_pipe_and_a_newline_is_one_cell() -> None:
    records = [
        {"model": "iris", "id": "r1", "version": 1, "mirrored": True, "outputs": {AWKWARD: [1]}, "latencyMs": 1.0},
        {"model": "iris", "id": "r1", "version": 2, "shadow": True, "outputs": {AWKWARD: [1]}, "latencyMs": 2.0},
    ]
    text = markdown("iris-live", pair(records, "iris", "2"))
    rows = table(text, "| output | kind | agreement | mean abs diff | max abs diff |")
    assert rows == [[CELL, "label", "100.00%", "-", "-"]]


def test_the_reviews_table_keeps_an_awkward_cell_in_place() -> None:
    """The review's rows as review.py hands them to its template: a version label written as an
    alias (`@ref`) is the user's text, and stays one cell."""
    from mlops_iac.render import macro
    from mlops_iac.review import MARKER, TEMPLATE

    rows = [{"name": "iris-local", "change": "changed", "before": f"@{AWKWARD} (not pinned)", "after": "v2 `abc` 100%"}]
    text = macro(TEMPLATE, "head", marker=MARKER, changed=1, rows=rows, left_out=0)
    assert table(text, "| deployment | change | before | after |") == [
        ["`iris-local`", "changed", f"@{CELL} (not pinned)", "v2 `abc` 100%"]
    ]


def test_the_score_summary_comes_from_its_template_byte_for_byte(monkeypatch: pytest.MonkeyPatch) -> None:
    """The bytes a job summary ($GITHUB_STEP_SUMMARY) had when built by hand, now from
    templates/markdown/score.md.j2 (a changed template shows here)."""
    from mlops_iac import render
    from mlops_iac.scoring.jobs import Summary

    rendered: list[str] = []
    real = render.render
    monkeypatch.setattr(render, "render", lambda t, **c: rendered.append(t) or real(t, **c))
    done = Summary(1_500, 1_480, 20, 4, 1, Path("manifest.json"))
    assert done.markdown("iris@2") == (
        "### Batch scoring with iris@2: complete\n\n| rows in | rows out | rejects | parts | resumed |\n"
        "|---:|---:|---:|---:|---:|\n| 1500 | 1480 | 20 | 4 | 1 |\n"
    )
    failed = Summary(10, 0, 0, 2, 0, Path("manifest.json"), failed="part 1: disk full")
    assert failed.markdown("iris").startswith("### Batch scoring with iris: failed: part 1: disk full\n\n| rows in |")
    assert rendered == ["markdown/score.md.j2", "markdown/score.md.j2"]
