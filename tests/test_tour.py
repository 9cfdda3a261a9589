"""The README's five-minute tour, run as written by a first-time user: the block of commands
under "A five-minute tour", line by line in a fresh folder, with the installed CLI."""

from __future__ import annotations

import json
import re
import subprocess
from pathlib import Path

from .conftest import ROOT, installed_env


def tour_commands() -> list[str]:
    readme = (ROOT / "README.md").read_text()
    section = readme.split("## A five-minute tour", 1)[1]
    block = re.search(r"```bash\n(.*?)```", section, re.S)
    assert block is not None, "the tour has no bash block"
    return [line.split("  #")[0].strip() for line in block.group(1).splitlines() if line.strip()]


def test_the_readme_tour_runs_as_written(tmp_path: Path) -> None:
    commands = tour_commands()
    assert commands[0].startswith("pip install -e ")
    # The first line installs this checkout; the test runs in the environment it already made.
    script = "\n".join(["set -euo pipefail", *commands[1:]])
    done = subprocess.run(
        ["bash", "-c", script], cwd=tmp_path, env=installed_env(), capture_output=True, text=True, timeout=600
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert "Traceback" not in done.stderr
    project = tmp_path / "my-project"
    out = done.stdout
    assert "mlops.yaml: valid (1 model(s), 1 target(s), 1 deployment(s))" in out
    assert re.search(r"^model@1 sha256:[0-9a-f]{64}$", out, re.M), out
    assert "pinned model@1 in mlops.lock" in out
    assert "would add" in out and '"model": "model"' in out  # the plan's diff, not written
    assert not (project / "stacks").exists()
    # The $schema line points at a file that exists beside mlops.yaml and is the current schema.
    first = (project / "mlops.yaml").read_text().splitlines()[0]
    target = project / first.split("$schema=", 1)[1]
    assert target.is_file()
    from mlops_iac.schema import json_schema

    assert json.loads(target.read_text()) == json_schema()


def test_init_keeps_an_existing_train_py(tmp_path: Path) -> None:
    (tmp_path / "train.py").write_text("print('mine')\n")
    done = subprocess.run(["mlops-iac", "init", str(tmp_path)], env=installed_env(), capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert (tmp_path / "train.py").read_text() == "print('mine')\n"
    assert (tmp_path / "mlops.yaml").exists() and (tmp_path / "mlops.schema.json").exists()


def test_the_readme_command_table_lists_every_command() -> None:
    from .test_bad_input import command_paths

    readme = (ROOT / "README.md").read_text()
    table = readme.split("## CLI reference", 1)[1].split("\n## ", 1)[0]
    listed = {m.group(1) for m in re.finditer(r"^\| `mlops-iac ([a-z]+(?: [a-z]+)?)", table, re.M)}
    listed |= {m.group(1) for m in re.finditer(r" / `(models [a-z]+)", table)}  # two commands in one row
    for m in re.finditer(r"^\| `mlops-iac ([a-z]+) ([a-z]+(?:\\\|[a-z]+)+) ", table, re.M):  # `rollout a\|b\|c`
        listed |= {f"{m.group(1)} {sub}" for sub in m.group(2).split("\\|")}
    assert set(command_paths()) - listed == set()


def test_init_ignores_what_the_tool_and_training_make(tmp_path: Path) -> None:
    # The tour's steps, then what `git add -A` would commit: intent and facts, no blobs or pickles.
    script = "\n".join(
        [
            "set -euo pipefail",
            "git init -q .",
            "mlops-iac init .",
            "python train.py",
            "mlops-iac register model --file model.joblib",
            "mlops-iac convert model@1 --no-speed",
            "git add -A --dry-run",
        ]
    )
    done = subprocess.run(
        ["bash", "-c", script], cwd=tmp_path, env=installed_env(), capture_output=True, text=True, timeout=600
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    added = sorted(re.findall(r"^add '(.+)'$", done.stdout, re.M))
    assert added == [".gitignore", "mlops.lock", "mlops.schema.json", "mlops.yaml", "train.py"]
    # What serve, score and build write later, named by path (check-ignore takes paths not made yet).
    later = [".mlops/serve/sha256-abc.onnx", "build/model-1/Dockerfile", ".mlops/profiles/model-1/report.md"]
    checked = subprocess.run(["git", "check-ignore", *later], cwd=tmp_path, capture_output=True, text=True)
    assert checked.stdout.split() == later
    assert subprocess.run(["git", "check-ignore", "-q", "mlops.lock"], cwd=tmp_path).returncode == 1


def test_init_adds_to_an_existing_gitignore_what_it_lacks(tmp_path: Path) -> None:
    (tmp_path / ".gitignore").write_text("secrets.env\n.mlops/")
    done = subprocess.run(["mlops-iac", "init", str(tmp_path)], env=installed_env(), capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    lines = (tmp_path / ".gitignore").read_text().splitlines()
    assert lines[:2] == ["secrets.env", ".mlops/"] and lines.count(".mlops/") == 1
    assert {"model.joblib", "sample.npy", "build/"} <= set(lines)
    again = subprocess.run(
        ["mlops-iac", "init", "--force", str(tmp_path)], env=installed_env(), capture_output=True, text=True
    )
    assert again.returncode == 0 and ".gitignore" not in again.stdout  # nothing lacking: left as it is


def test_a_typo_in_source_fails_validate_although_train_is_set(tmp_path: Path) -> None:
    from click.testing import CliRunner

    from mlops_iac.cli import main

    assert CliRunner().invoke(main, ["init", str(tmp_path)]).exit_code == 0
    for name in ("model.joblib", "sample.npy"):  # as `python train.py` leaves them
        (tmp_path / name).write_bytes(b"trained")
    spec = tmp_path / "mlops.yaml"
    spec.write_text(spec.read_text().replace("source: model.joblib ", "source: model.jobilb "))
    typo = CliRunner().invoke(main, ["validate", "-f", str(spec)])
    assert typo.exit_code == 1, typo.output
    assert "models[0].source: model.jobilb does not exist (did you mean 'model.joblib'?)" in typo.output
    # A path the train script names is one training will write: still only a warning.
    (tmp_path / "train.py").write_text((tmp_path / "train.py").read_text().replace("model.joblib", "model.jobilb"))
    written_later = CliRunner().invoke(main, ["validate", "-f", str(spec)])
    assert written_later.exit_code == 0, written_later.output
    assert "warning: models[0].source: model.jobilb does not exist yet" in written_later.output


def test_the_readme_curl_names_the_tours_model(tmp_path: Path) -> None:
    from click.testing import CliRunner

    from mlops_iac.cli import main

    readme = (ROOT / "README.md").read_text()
    section = readme.split("## The model server", 1)[1]
    curl = re.search(r"curl -s localhost:(\d+)/v2/models/([^/]+)/infer", section)
    assert curl is not None, "the server's section has no curl"
    assert CliRunner().invoke(main, ["init", str(tmp_path)]).exit_code == 0
    import yaml

    spec = yaml.safe_load((tmp_path / "mlops.yaml").read_text())
    assert curl.group(2) in [m["name"] for m in spec["models"]]
    assert int(curl.group(1)) == spec["targets"]["local"]["port"]
    # The tour's own commands serve that project's model: `init` as the tour runs it.
    assert "mlops-iac init my-project" in tour_commands()
