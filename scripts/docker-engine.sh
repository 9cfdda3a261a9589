#!/usr/bin/env bash
# Start a Docker engine for the tests, as CI needs it: no bridge (so run
# containers with --network host), data under $1 (default a temporary folder).
# Prints `export DOCKER_HOST=...; export MLOPS_IAC_DOCKERD_PID=...` for eval.
set -euo pipefail
root="${1:-$(mktemp -d /tmp/mlops-docker.XXXXXX)}"
mkdir -p "$root"
dockerd --storage-driver=overlay2 --iptables=false --ip6tables=false --bridge=none \
    --data-root="$root/data" --exec-root="$root/exec" --host="unix://$root/docker.sock" \
    --pidfile="$root/docker.pid" >"$root/dockerd.log" 2>&1 &
pid=$!
for _ in $(seq 1 100); do
    if DOCKER_HOST="unix://$root/docker.sock" docker info >/dev/null 2>&1; then
        echo "export DOCKER_HOST=unix://$root/docker.sock; export MLOPS_IAC_DOCKERD_PID=$pid"
        exit 0
    fi
    sleep 0.2
done
echo "dockerd did not start; its log:" >&2
cat "$root/dockerd.log" >&2
exit 1
