"""Every file in tests/malformed/ states the problem it must produce in `# expect:` lines."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from mlops_iac.errors import ConfigError
from mlops_iac.resolve import load

from .conftest import copy_into

CASES = sorted((Path(__file__).parent / "malformed").glob("*.yaml"))
EXPECT = re.compile(r"^# expect: (\d+):(\d+) (\S*): (.+)$")


def expectations(path: Path) -> list[tuple[int, int, str, str]]:
    found = [EXPECT.match(line) for line in path.read_text().splitlines()]
    out = [(int(m[1]), int(m[2]), m[3], m[4]) for m in found if m]
    assert out, f"{path.name} has no '# expect:' line"
    return out


def test_there_are_enough_cases() -> None:
    assert len(CASES) >= 30


@pytest.mark.parametrize("case", CASES, ids=[c.stem for c in CASES])
def test_malformed_file_reports_line_path_and_message(case: Path, project: Path) -> None:
    file = copy_into(case, project)
    with pytest.raises(ConfigError) as raised:
        load(file)
    problems = raised.value.problems
    assert all(p.file == str(file) for p in problems)
    expected = expectations(case)
    rendered = [f"{p.line}:{p.column} {p.path}: {p.message}; {p.allowed}" for p in problems]
    # Exactly the stated problems, no more and no fewer: where each is, and what its message says.
    assert sorted((p.line, p.column, p.path) for p in problems) == sorted((e[0], e[1], e[2]) for e in expected), (
        "\n  ".join(["got:", *rendered])
    )
    for line, column, path, fragment in expected:
        said = [f"{p.message}; {p.allowed}" for p in problems if (p.line, p.column, p.path) == (line, column, path)]
        assert any(fragment in text for text in said), f"{line}:{column} {path}: ...{fragment}... not in {said}"
