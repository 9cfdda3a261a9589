# shellcheck shell=bash
# Sourced by every `run:` step's bash through BASH_ENV (set by tests/test_workflow_act.py):
# when the step ends, its job-summary file is appended to $STANDIN_SUMMARIES, which is how
# GitHub assembles a job's summary from its steps' files. act discards them.
unset BASH_ENV  # the step's own children (training commands, scripts) collect nothing
if [ -n "${GITHUB_STEP_SUMMARY:-}" ] && [ -n "${STANDIN_SUMMARIES:-}" ]; then
    trap 'cat "$GITHUB_STEP_SUMMARY" >> "$STANDIN_SUMMARIES" 2>/dev/null || true' EXIT
fi
