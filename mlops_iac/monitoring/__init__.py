"""Monitoring: baselines and drift, alert rules and dashboards for the stacks."""
