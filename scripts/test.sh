#!/usr/bin/env bash
# The whole test suite, with its set-up: installs the project and its test tools, then runs
# ruff, mypy, the schema freshness check and pytest. Extra arguments go to pytest.
set -euo pipefail
cd "$(dirname "$0")/.."
python3 -m pip install --quiet --disable-pip-version-check -e ".[dev,ml]"
echo "== ruff";   python3 -m ruff check .
echo "== mypy";   python3 -m mypy
echo "== schema"; python3 -m mlops_iac schema --check
echo "== pytest"; python3 -m pytest "$@"
