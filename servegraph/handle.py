"""Handle classes, importable as in Ray Serve: ``from servegraph.handle import RayServeSyncHandle``."""

from .runtime.data.handle import (
    DeploymentHandle,
    DeploymentResponse,
    DeploymentResponseGenerator,
    RayServeDeploymentHandle,
    RayServeHandle,
    RayServeSyncHandle,
)

__all__ = [
    "DeploymentHandle",
    "DeploymentResponse",
    "DeploymentResponseGenerator",
    "RayServeDeploymentHandle",
    "RayServeHandle",
    "RayServeSyncHandle",
]
