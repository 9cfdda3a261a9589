"""The pydantic models of mlops.yaml (as written), one module per section."""

from .build import Build
from .deployments import Deployment, Hardware, ReplicaRange
from .document import API_VERSION, Spec
from .models import Convert, Model, Profile, Signature, Tensor, Validate
from .monitoring import Monitoring
from .project import Project
from .registry import LocalRegistry, OciRegistry
from .targets import DockerTarget, KubernetesTarget, LocalTarget

__all__ = [
    "API_VERSION",
    "Build",
    "Convert",
    "Deployment",
    "DockerTarget",
    "Hardware",
    "KubernetesTarget",
    "LocalRegistry",
    "LocalTarget",
    "Model",
    "Monitoring",
    "OciRegistry",
    "Profile",
    "Project",
    "ReplicaRange",
    "Signature",
    "Spec",
    "Tensor",
    "Validate",
]
