"""servegraph: a deployment-graph DSL and compiler for serving on Ray.

Code written for Ray Serve's model composition ports by changing imports only::

    import servegraph as serve
    from servegraph import InputNode, MultiOutputNode, DAGDriver
"""

from __future__ import annotations

from typing import Any

from .batching import batch
from .compiler import CompiledGraph, compile
from .dsl import (
    DAGDriver,
    Deployment,
    DeploymentOptions,
    InputNode,
    MultiOutputNode,
    Split,
    Switch,
    deployment,
)
from .errors import (
    BackPressureError,
    BindError,
    ConfigError,
    CycleError,
    DeploymentError,
    Diagnostic,
    GraphError,
    ImportPathError,
    InputNodeError,
    NoRouteError,
    OptionError,
    OptionValueError,
    RenderError,
    ResourceError,
    RoutingError,
    SerializationError,
    UnreachableNodeError,
)
from .fastapi_ingress import ingress

# The runtime imports Ray, which takes a second; load it on first use so that
# building, checking and rendering graphs stays fast.
_RUNTIME_NAMES = {
    "run": "api",
    "delete": "api",
    "shutdown": "api",
    "status": "api",
    "get_app_handle": "api",
    "get_deployment_handle": "api",
    "start": "api",
}


def __getattr__(name: str) -> Any:
    module = _RUNTIME_NAMES.get(name)
    if module is None:
        raise AttributeError(f"module 'servegraph' has no attribute {name!r}")
    import importlib

    value = getattr(importlib.import_module(f"servegraph.runtime.{module}"), name)
    globals()[name] = value
    return value


__all__ = [
    "BindError",
    "CompiledGraph",
    "ConfigError",
    "CycleError",
    "DAGDriver",
    "Deployment",
    "BackPressureError",
    "DeploymentError",
    "DeploymentOptions",
    "Diagnostic",
    "GraphError",
    "ImportPathError",
    "InputNode",
    "InputNodeError",
    "MultiOutputNode",
    "NoRouteError",
    "OptionError",
    "OptionValueError",
    "RenderError",
    "ResourceError",
    "RoutingError",
    "SerializationError",
    "Split",
    "Switch",
    "UnreachableNodeError",
    "batch",
    "compile",
    "delete",
    "deployment",
    "get_app_handle",
    "get_deployment_handle",
    "ingress",
    "run",
    "shutdown",
    "start",
    "status",
]
