"""Pin MODEL@N in mlops.yaml: every deployment of MODEL that names one `version` gets N.

The dispatch job of the reusable workflow runs this on a branch: intent changes in a pull
request that people review, and no alias moves in the shared registry before it merges.
Only the value is rewritten, in place, so comments and layout stay as the user wrote them.

  python pin.py mlops.yaml iris@3
"""

from __future__ import annotations

import sys
from pathlib import Path

from mlops_iac.errors import MlopsIacError
from mlops_iac.loader import load_file


def pin(path: Path, model: str, version: int) -> list[str]:
    doc = load_file(path)
    lines = path.read_text(encoding="utf-8").splitlines(keepends=True)
    changed: list[str] = []
    for i, deployment in enumerate(doc.data.get("deployments") or []):
        if deployment.get("model") != model:
            continue
        name = deployment.get("name", f"deployments[{i}]")
        if "version" not in deployment:
            raise MlopsIacError(f"{path}: deployment {name} splits traffic between versions; pin it by hand")
        line, column = doc.position(("deployments", i, "version"))
        text = lines[line - 1]
        old = str(deployment["version"])
        if text[column - 1 : column - 1 + len(old)] != old:
            raise MlopsIacError(f"{path}:{line}: cannot find the version of {name} to rewrite; pin it by hand")
        lines[line - 1] = text[: column - 1] + str(version) + text[column - 1 + len(old) :]
        changed.append(f"{name}: {old} -> {version}")
    if not changed:
        raise MlopsIacError(f"{path}: no deployment serves {model}")
    path.write_text("".join(lines), encoding="utf-8")
    return changed


def main(argv: list[str]) -> int:
    if len(argv) != 2 or "@" not in argv[1] or not argv[1].split("@")[1].isdigit():
        print("usage: pin.py MLOPS_YAML MODEL@N", file=sys.stderr)
        return 2
    model, number = argv[1].split("@")
    try:
        for line in pin(Path(argv[0]), model, int(number)):
            print(line)
    except MlopsIacError as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
