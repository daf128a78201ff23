"""Graph building, checks and lowering to the IR, and the artifacts made from it. Imports no Ray.

The passes (``passes/``) and checks (``checks/``) run in the order written in
:mod:`servegraph.compiler.pipeline`, over the IR (:mod:`.ir`); deploy configs
live in ``config/`` (schema, loading, overrides); each artifact (deploy config,
RayService, JSON IR, DOT, Mermaid, rendered diagrams) has a module in ``emit/``.

The names below load on first use: the runtime imports only the IR (:mod:`.ir`)
and the compiled-path rule (:mod:`.fast_path`) from here, so replicas and the
proxy never load the emitters, the config schema or networkx.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .compiled import CompiledGraph
    from .config.app import AppInfo
    from .config.loading import load_config
    from .config.overrides import check_overrides, deployment_overrides
    from .config.schema import ServeConfig
    from .emit.json_ir import load_compiled, load_ir
    from .pipeline import compile

#: Each public name and the module that defines it, imported when the name is first read.
_LAZY = {
    "AppInfo": ".config.app",
    "CompiledGraph": ".compiled",
    "ServeConfig": ".config.schema",
    "check_overrides": ".config.overrides",
    "compile": ".pipeline",
    "deployment_overrides": ".config.overrides",
    "load_compiled": ".emit.json_ir",
    "load_config": ".config.loading",
    "load_ir": ".emit.json_ir",
}


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(module, __name__), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_LAZY))


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
