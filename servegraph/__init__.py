"""servegraph: a deployment-graph DSL and compiler for serving on Ray.

Code written for Ray Serve's model composition ports by changing imports only::

    import servegraph as serve
    from servegraph import InputNode, MultiOutputNode, DAGDriver
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from ._handle_era import handle_api
from .batching import batch
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
from .dsl import nodes as _dsl_nodes
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
from .multiplex import get_multiplexed_model_id, multiplexed

if TYPE_CHECKING:
    from .compiler import CompiledGraph, compile

# The runtime imports Ray, which takes a second; load it on first use so that
# building, checking and rendering graphs stays fast. The compiler (networkx, the
# emitters, the config schema) loads on first use too, so that replicas and the
# proxy, which import only the runtime and the IR, never load it.
_LAZY_NAMES = {
    "CompiledGraph": "compiler",
    "compile": "compiler",
    "run": "runtime.client.api",
    "delete": "runtime.client.api",
    "shutdown": "runtime.client.api",
    "status": "runtime.client.api",
    "get_app_handle": "runtime.client.api",
    "get_deployment_handle": "runtime.client.api",
    "graph_stats": "runtime.client.api",
    "start": "runtime.client.api",
    "shutdown_async": "runtime.client.api",
    "get_replica_context": "runtime.common.context",
}


def _execute(node: Any, args: tuple, kwargs: dict) -> Any:
    from .runtime.client.api import execute_graph

    return execute_graph(node, args, kwargs)


_dsl_nodes.set_executor(_execute)  # dag.execute(): the DSL imports no runtime, so it is handed in


def __getattr__(name: str) -> Any:
    module = _LAZY_NAMES.get(name)
    if module is None:
        raise AttributeError(f"module 'servegraph' has no attribute {name!r}")
    import importlib

    value = getattr(importlib.import_module(f"servegraph.{module}"), name)
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
    "get_multiplexed_model_id",
    "get_replica_context",
    "graph_stats",
    "handle_api",
    "ingress",
    "multiplexed",
    "run",
    "shutdown",
    "shutdown_async",
    "start",
    "status",
]
