#!/usr/bin/env bash
# The quickstart, end to end, as far as mlops-iac goes today. Safe to run again: it starts
# from a clean registry and lock each time. The server listens on port 8080; set PORT to
# use another one (PORT=8090 bash examples/quickstart/run.sh).
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
python3 -m pip install --quiet --disable-pip-version-check -e "$here/../..[convert]"
cd "$here"
rm -rf .mlops out mlops.lock collected

echo "== 1. train";    python3 train.py
echo "== 2. validate"; mlops-iac validate
echo "== 3. register"; mlops-iac register iris --file model.joblib --metric accuracy=0.978
echo "== 4. convert";  mlops-iac convert iris@1
echo "== 5. profile";  mlops-iac profile iris@1 --quick
echo "== 6. build";    mlops-iac build iris@1
echo "== 7. lock";     mlops-iac lock show
echo "== 8. synth";    mlops-iac synth --out out/stacks
echo "== 9. serve";    mlops-iac serve --port "${PORT:-8080}" &
server=$!
# Stop the server however this script ends, keeping this script's own exit status.
trap 'status=$?; kill "$server" 2>/dev/null || true; wait "$server" 2>/dev/null || true; exit $status' EXIT
# predict.py waits for readiness, and gives up at once if the server has exited (a busy port).
echo "== 10. predict"; python3 predict.py "http://127.0.0.1:${PORT:-8080}" --pid "$server"
echo "== 11. send the sample"; python3 predict.py "http://127.0.0.1:${PORT:-8080}" sample.npy 3
# A clean stop: the server drains and writes every record its collector holds.
kill "$server"; wait "$server" || true
echo "== 12. drift"; mlops-iac monitor drift iris@1 --collected collected/requests.jsonl
