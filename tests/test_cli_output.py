"""Small things a reader of the CLI's output notices: no `vNone`, no YAML anchors."""

from __future__ import annotations

from pathlib import Path

import yaml
from click.testing import CliRunner

from mlops_iac.cli import main

from .test_review import commit, diff, repo  # noqa: F401 - the fixture, shared
from .test_stacks import PRODUCTION


def test_diff_names_an_unpinned_alias_instead_of_vnone(repo: Path) -> None:  # noqa: F811
    text = (repo / "mlops.yaml").read_text()
    commit(repo, message="start")
    (repo / "mlops.yaml").write_text(text.replace("    version: 1\n", "    alias: staging\n", 1))
    result = CliRunner().invoke(main, ["diff", "-f", str(repo / "mlops.yaml"), "--base", "HEAD"])
    # Reviewed as written, and refused as `validate` refuses it: the alias is not in the lock.
    assert result.exit_code == 1 and "unknown alias 'staging'" in result.stderr
    out = result.stdout
    assert "vNone" not in out
    assert "@staging (not pinned) `unpinned`" in out


def test_render_yaml_writes_shared_values_in_full() -> None:
    result = CliRunner().invoke(main, ["render", "-f", str(PRODUCTION / "mlops.yaml"), "--target", "prod"])
    assert result.exit_code == 0, result.output
    assert "&id" not in result.stdout and "*id" not in result.stdout
    objects = [d for d in yaml.safe_load_all(result.stdout) if d]
    as_json = CliRunner().invoke(
        main, ["render", "-f", str(PRODUCTION / "mlops.yaml"), "--target", "prod", "--format", "json"]
    )
    import json

    assert as_json.exit_code == 0, as_json.output
    assert objects == json.loads(as_json.stdout)["items"]  # the same objects, only the format differs
