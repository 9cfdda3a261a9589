"""`registry`: where model versions live. Credentials never appear here, only in the
environment, so the file can be committed."""

from __future__ import annotations

import re
from typing import Annotated, Any, Literal

from pydantic import Field, model_validator
from pydantic_core import PydanticCustomError

from .types import SpecModel

_SECRET_KEYS = {
    "password",
    "token",
    "username",
    "user",
    "secret",
    "credentials",
    "auth",
    "apikey",
    "apiKey",
    "accessKey",
    "secretKey",
}
# registry[:port]/path, lowercase, as the OCI distribution spec names repositories.
OCI_REPOSITORY = r"^[a-z0-9.-]+(:[0-9]+)?(/[a-z0-9]+([._-][a-z0-9]+)*)+$"


class _NoSecrets(SpecModel):
    @model_validator(mode="before")
    @classmethod
    def _refuse_credentials(cls, data: Any) -> Any:
        if isinstance(data, dict):
            for key in sorted(k for k in data if isinstance(k, str) and k in _SECRET_KEYS):
                raise PydanticCustomError(
                    "mlops",
                    "credentials must not be written in the file; {allowed}",
                    {
                        "at": key,
                        "allowed": "set MLOPS_IAC_REGISTRY_USERNAME and "
                        "MLOPS_IAC_REGISTRY_PASSWORD in the environment (or use docker login)",
                    },
                )
        return data


class LocalRegistry(_NoSecrets):
    backend: Literal["local"]
    path: str = Field(".mlops/registry", description="Folder, relative to mlops.yaml.")


class OciRegistry(_NoSecrets):
    backend: Literal["oci"]
    repository: str = Field(pattern=OCI_REPOSITORY, description="registry/namespace, e.g. ghcr.io/acme/models.")
    insecure: bool = Field(False, description="Plain HTTP (loopback test registries only).")
    timeout: float = Field(
        10.0,
        gt=0,
        le=600,
        description="Seconds to wait for the registry to connect, and for each answer, before a retry.",
    )
    retries: int = Field(
        2,
        ge=0,
        le=10,
        description="Retries of a call the registry did not answer or answered 429/5xx (0.5-4 s apart); "
        "a failed push fails in about (retries + 1) x timeout seconds, naming its step.",
    )


Registry = Annotated[LocalRegistry | OciRegistry, Field(discriminator="backend")]

OCI_REPOSITORY_RE = re.compile(OCI_REPOSITORY)
