#!/usr/bin/env bash
# The whole test suite, with its set-up: installs the project and its test tools, then runs
# ruff, mypy, the schema freshness check and pytest. Extra arguments go to pytest.
set -euo pipefail
cd "$(dirname "$0")/.."
# The versions the suite last passed with (constraints.txt, made by scripts/constraints.py);
# CI_NEWEST=1 takes the newest that pyproject.toml allows instead, upgrading what is installed,
# so a new release that breaks us fails a run with its name rather than a user's install.
if [ "${CI_NEWEST:-}" = 1 ]; then
    versions=(--upgrade --upgrade-strategy eager)
else
    versions=(--constraint constraints.txt)
fi
# torch==2.13.0 is the CPU build that lies on our machines' disk; pip takes it from there.
python3 -m pip install --quiet --disable-pip-version-check "${versions[@]}" torch==2.13.0
python3 -m pip install --quiet --disable-pip-version-check "${versions[@]}" -e ".[dev,convert,score,boosters,pytorch,pulumi]"
# checkov pins old versions of common packages: it gets a virtual environment of its own.
if [ ! -x .venv-checkov/bin/checkov ]; then
    python3 -m venv .venv-checkov
    .venv-checkov/bin/pip install --quiet --disable-pip-version-check checkov
fi
echo "== ruff";   python3 -m ruff check . && python3 -m ruff format --check .
echo "== mypy";   python3 -m mypy
echo "== schema"; python3 -m mlops_iac schema --check && python3 -m mlops_iac schema --openapi --check
echo "== pytest"; python3 -m pytest "$@"
