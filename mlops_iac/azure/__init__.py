"""The Azure resources of a deployment, as plain data. Pure.

One source of truth, as `manifests.py` is for Kubernetes: the Pulumi components build typed
pulumi-azure-native resources from these properties (`components/azure.py`, which checks every
name against the provider's input types), `mlops-iac render` prints them, and `synth` writes
the IoT Edge deployment manifests.

- Container Apps: one Container App per deployment in multiple-revision mode; each version is
  a revision named `<app>--v<N>-<digest>`; the ingress splits traffic by revision weight. The
  app's template is the newest version (the last listed, the canary), so an older version's
  revision is the one an earlier `up` made: deploy the stable version before its canary.
- Container Instances: one container group per version with its own DNS label; no load
  balancer, so the optional front is a CNAME to the version with all the traffic.
- IoT Edge: a deployment manifest per device group, the module's `createOptions` carrying the
  limits and restrictions our other targets run with.

Modules: `common` (settings as one line, registry login, service limits), `apps`,
`instances`, `edge` (one per service), `views` (what `review` and `render` show).
"""
