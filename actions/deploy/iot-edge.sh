#!/usr/bin/env bash
# Apply an azure-iot-edge target: one IoT Hub deployment per device group, from the manifests
# `mlops-iac synth` wrote, their placeholders filled from the environment, by the Azure CLI.
# IoT Hub deployments are immutable, so each id carries the manifest's digest: a change is a
# new deployment with the same priority, which replaces the old one on the devices it targets.
# Usage: iot-edge.sh CONFIG TARGET   (needs `az` with the azure-iot extension, logged in)
set -euo pipefail
config="$1" target="$2"
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
mlops-iac render -f "$config" --target "$target" --format json --out "$work/render.json" >/dev/null
python3 - "$work" <<'PY'
import json, pathlib, sys
work = pathlib.Path(sys.argv[1])
for i, item in enumerate(json.loads((work / "render.json").read_text())["resources"]):
    props = item["properties"]
    (work / f"{i}.json").write_text(json.dumps(props["content"], indent=2, sort_keys=True) + "\n")
    (work / f"{i}.args").write_text("\n".join([item["name"], props["hub"], str(props["priority"]),
                                               props["targetCondition"]]) + "\n")
PY
az extension add --name azure-iot --upgrade --only-show-errors >/dev/null
for args in "$work"/*.args; do
  { read -r id; read -r hub; read -r priority; read -r condition; } < "$args"
  content="${args%.args}.json"
  # A placeholder without its value would deploy an empty key or login: refuse instead.
  for name in MLOPS_IAC_API_KEY MLOPS_IAC_REGISTRY_USERNAME MLOPS_IAC_REGISTRY_PASSWORD; do
    if grep -q "\${$name}" "$content" && [ -z "${!name:-}" ]; then
      echo "::error::$id needs $name in the environment (a secret of the workflow)"
      exit 1
    fi
  done
  # shellcheck disable=SC2016 # the names, not their values: envsubst replaces only these
  envsubst '$MLOPS_IAC_API_KEY $MLOPS_IAC_REGISTRY_USERNAME $MLOPS_IAC_REGISTRY_PASSWORD' \
    < "$content" > "$work/applied.json"
  if az iot edge deployment show --hub-name "$hub" --deployment-id "$id" >/dev/null 2>&1; then
    echo "$id: deployed already"
    continue
  fi
  az iot edge deployment create --hub-name "$hub" --deployment-id "$id" --content "$work/applied.json" \
    --target-condition "$condition" --priority "$priority" >/dev/null
  echo "$id: created on $hub for $condition (priority $priority)"
done
