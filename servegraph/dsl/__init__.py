"""What users write: deployments, ``.bind()`` and graph nodes. Imports nothing from compiler or runtime."""

from .callsite import CallSite
from .deployment import Deployment, deployment
from .driver import DAGDriver, DriverNode
from .nodes import (
    DAGNode,
    DeploymentNode,
    FunctionNode,
    InputAttributeNode,
    InputNode,
    MethodNode,
    MultiOutputNode,
)
from .options import DeploymentOptions
from .routing import Split, Switch

__all__ = [
    "CallSite",
    "DAGDriver",
    "DAGNode",
    "Deployment",
    "DeploymentNode",
    "DeploymentOptions",
    "DriverNode",
    "FunctionNode",
    "InputAttributeNode",
    "InputNode",
    "MethodNode",
    "MultiOutputNode",
    "Split",
    "Switch",
    "deployment",
]
