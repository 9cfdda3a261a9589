"""What every image promises every target, in one place: the ports the server listens on, the user
it runs as, and the environment variables it and the tool read. A leaf: the spec's defaults, the
server inside the image (which carries this file), the Dockerfile and the deployed objects all
take their numbers and names from here, so they cannot drift apart."""

from __future__ import annotations

PORT = 8080  # http: the v2 REST API
GRPC_PORT = 8081  # grpc: the v2 gRPC API (inference.GRPCInferenceService), same key as REST
METRICS_PORT = 8082  # metrics: GET /metrics without the API key, where a target opens it to monitoring only
UID = 10001  # the image's USER (and group): not root, the same on every target


def version_host_port(first: int, number: int) -> int:
    """On one host (a Docker host, an edge device) version N of a deployment publishes each of its
    ports (REST, gRPC) on the target's port for version 1 plus N - 1: a function of the version
    alone, so a version keeps its ports while others come and go."""
    return first + number - 1


API_KEY_ENV = "MLOPS_IAC_API_KEY"  # the key clients send; the server reads it, smoke and rollout send it
# The JSON of a server.json, where an image gets its settings (a Kubernetes ConfigMap, Docker env).
SETTINGS_ENV = "MLOPS_IAC_SERVER_SETTINGS"
PORT_ENV = "MLOPS_IAC_PORT"  # the port the image's HEALTHCHECK asks
REGISTRY_USERNAME_ENV = "MLOPS_IAC_REGISTRY_USERNAME"  # an OCI registry's credentials
REGISTRY_PASSWORD_ENV = "MLOPS_IAC_REGISTRY_PASSWORD"  # noqa: S105  (the name of the variable, not a password)
PROMETHEUS_ENV = "MLOPS_IAC_PROMETHEUS_URL"  # rollout's evidence on Kubernetes targets
