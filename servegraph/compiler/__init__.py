"""Graph building, checks and lowering to the IR, and the artifacts made from it. Imports no Ray.

The passes and their order live in :mod:`servegraph.compiler.pipeline`; each
artifact (deploy config, RayService, JSON IR, DOT, Mermaid) has an ``emit_*``
module of its own.
"""

from .compiled import CompiledGraph
from .config.app import AppInfo
from .config.schema import ServeConfig, check_overrides, deployment_overrides, load_config
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
