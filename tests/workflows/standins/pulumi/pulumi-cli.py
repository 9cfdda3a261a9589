"""Test stand-in for the `pulumi` CLI that pulumi/actions installs: one JSON line per call in
$STANDIN_PULUMI_LOG (the arguments; for `up`, the canary weights of the plan it applies and
when). `up` checks that the project mlops-iac wrote is there, as the real CLI would need."""

import json
import os
import sys
import time

args = sys.argv[1:]
record = {"cli": args, "time": time.time()}
if args[:1] == ["up"]:
    stack, cwd = args[args.index("--stack") + 1], args[args.index("--cwd") + 1]
    with open(os.path.join(cwd, "Pulumi.yaml"), encoding="utf-8"):
        pass
    with open(os.path.join(cwd, stack, "plan.json"), encoding="utf-8") as file:
        plan = json.load(file)
    record["weights"] = {d["name"]: {str(v["number"]): v["weight"] for v in d["versions"]} for d in plan["deployments"]}
with open(os.environ["STANDIN_PULUMI_LOG"], "a", encoding="utf-8") as log:
    log.write(json.dumps(record) + "\n")
