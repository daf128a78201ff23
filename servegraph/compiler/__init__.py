"""Graph building, checks and lowering to the IR, and the artifacts made from it. Imports no Ray.

The passes (``passes/``) and checks (``checks/``) run in the order written in
:mod:`servegraph.compiler.pipeline`, over the IR (:mod:`.ir`); deploy configs
live in ``config/`` (schema, loading, overrides); each artifact (deploy config,
RayService, JSON IR, DOT, Mermaid, rendered diagrams) has a module in ``emit/``.
"""

from .compiled import CompiledGraph
from .config.app import AppInfo
from .config.loading import load_config
from .config.overrides import check_overrides, deployment_overrides
from .config.schema import ServeConfig
from .emit.json_ir import load_compiled, load_ir
from .pipeline import compile

__all__ = [
    "AppInfo",
    "CompiledGraph",
    "ServeConfig",
    "check_overrides",
    "compile",
    "deployment_overrides",
    "load_compiled",
    "load_config",
    "load_ir",
]
