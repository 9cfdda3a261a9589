#!/usr/bin/env bash
# The outcome of a rollout, back on the base branch through a pull request (the reusable
# workflow's rollout and abort jobs run this in the working directory, after the lock changed):
#   promoted:              mlops.lock records it, so later deploys keep the canary at 100%;
#   rolled back, aborted:  mlops.lock records the weight 0, and the deployment's entry in
#                          mlops.yaml goes back to before its canary (revert.py).
# The body is the decision and its evidence, as `mlops-iac rollout status` prints it.
#   rollout-pr.sh DEPLOYMENT     (env: CONFIG LOCK_TOKEN REPO BASE SERVER RUNNER_TEMP GITHUB_WORKSPACE)
set -euo pipefail
dep="$1"
state="$(mlops-iac rollout list -f "$CONFIG" | awk -F'\t' -v d="$dep" '$1 == d { print $2 }')"
rows="$(mlops-iac rollout list -f "$CONFIG" | awk -F'\t' -v d="$dep" '$1 == d')"
case "$state" in
  promoted) title="$dep: the canary is promoted (rollout recorded)" ;;
  rolled-back) title="Revert the canary of $dep: rolled back on evidence" ;;
  aborted) title="Revert the canary of $dep: rollout aborted" ;;
  *) echo "$dep: the rollout is ${state:-unknown} ($rows); nothing to record yet"; exit 0 ;;
esac
if [ -z "${LOCK_TOKEN:-}" ]; then
  echo "::error::the rollout of $dep is $state, but no lock-token was given to open its pull request"
  exit 1
fi
saved="$RUNNER_TEMP/mlops.lock.rollout"
cp mlops.lock "$saved"
start="$(git rev-parse HEAD)"
body="$RUNNER_TEMP/rollout-$dep.md"
mlops-iac rollout status "$dep" -f "$CONFIG" > "$body"
if [ "$state" != promoted ]; then
  reverted="$(python "$GITHUB_WORKSPACE/.mlops-iac-src/actions/scripts/revert.py" "$CONFIG" "$dep")"
  mlops-iac validate -f "$CONFIG"
  { echo; echo "This puts \`$dep\` in \`$CONFIG\` back as it was at $reverted."; } >> "$body"
fi
{ echo; echo "Opened by the mlops-iac workflow; nothing deploys until this merges."; } >> "$body"
branch="mlops-iac/rollout-$dep-$state-$(git rev-parse --short=12 HEAD)"
git switch -q -c "$branch"
git config user.name "mlops-iac"
git config user.email "mlops-iac@users.noreply.github.com"
git add -- mlops.lock "$CONFIG"
git commit -q -m "$title"
# The token authenticates this push only; it is not stored in .git/config.
auth="AUTHORIZATION: basic $(printf 'x-access-token:%s' "$LOCK_TOKEN" | base64 -w0)"
echo "::add-mask::$auth"
git -c "http.$SERVER/.extraheader=$auth" push --force origin "HEAD:refs/heads/$branch"
url="$(GH_TOKEN="$LOCK_TOKEN" python3 "$GITHUB_WORKSPACE/.mlops-iac-src/actions/scripts/github.py" \
  open-pr "$REPO" "$branch" "$BASE" "$title" "$body")"
echo "$title: $url" | tee -a "${GITHUB_STEP_SUMMARY:-/dev/null}"
# Back where we started, with every rollout's facts, for the next deployment's pull request.
git switch -q --detach "$start"
cp "$saved" mlops.lock
