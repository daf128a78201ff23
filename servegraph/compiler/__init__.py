"""Graph building, checks and lowering to the IR. Imports no Ray.

The passes and their order live in :mod:`servegraph.compiler.pipeline`.
"""

from .compiled import CompiledGraph
from .pipeline import compile

__all__ = ["CompiledGraph", "compile"]
