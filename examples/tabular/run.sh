#!/usr/bin/env bash
# The tabular example, end to end: a DataFrame pipeline trained, registered, converted (one ONNX
# input per column), profiled, served, and checked over HTTP against the native pipeline on
# held-out rows, then drift-checked on what the server collected. Safe to run again: it starts from a clean registry and lock each time.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
python3 -m pip install --quiet --disable-pip-version-check -e "$here/../..[convert,boosters]" "palmerpenguins>=0.1.6"
cd "$here"
rm -rf .mlops out mlops.lock collected

echo "== 1. train";    python3 train.py
echo "== 2. validate"; mlops-iac validate
echo "== 3. register"; mlops-iac register penguins --file model.joblib
echo "== 4. convert";  mlops-iac convert penguins@1
echo "== 5. profile";  mlops-iac profile penguins@1 --quick
echo "== 6. serve";    mlops-iac serve --port "${PORT:-8080}" &
server=$!
# Stop the server however this script ends, keeping this script's own exit status.
trap 'status=$?; kill "$server" 2>/dev/null || true; wait "$server" 2>/dev/null || true; exit $status' EXIT
echo "== 7. predict";  python3 predict.py "http://127.0.0.1:${PORT:-8080}"
echo "== 8. send the sample"; python3 predict.py "http://127.0.0.1:${PORT:-8080}" sample.parquet 2
# A clean stop: the server drains and writes every record its collector holds.
kill "$server"; wait "$server" || true
echo "== 9. drift";    mlops-iac monitor drift penguins@1 --collected collected/requests.jsonl
