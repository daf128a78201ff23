"""Write a compiled graph's diagram to a file, the format chosen by the file's extension.

``.dot`` and ``.mmd`` are text servegraph writes itself; ``.svg``, ``.png``
and ``.pdf`` go through Graphviz: the ``graphviz`` Python package and its
``dot`` program, both looked up only when needed (:func:`find_dot` is the
seam tests replace).
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Callable
from typing import TYPE_CHECKING

from ...errors import RenderError
from .dot import to_dot
from .mermaid import to_mermaid

if TYPE_CHECKING:
    from ..compiled import CompiledGraph

TEXT_FORMATS = (".dot", ".mmd")
GRAPHVIZ_FORMATS = (".svg", ".png", ".pdf")
FORMATS = TEXT_FORMATS + GRAPHVIZ_FORMATS

INSTALL_DOT = (
    "drawing {what} needs Graphviz's `dot` program, which is not installed: "
    "apt-get install graphviz (macOS: brew install graphviz), or write a .dot or .mmd file instead"
)


def find_dot() -> str | None:
    """The path of Graphviz's ``dot`` program, or None."""
    return shutil.which("dot")


def pipe(dot_source: str, fmt: str) -> bytes:
    """Run ``dot`` on DOT text and return the drawing in ``fmt`` (svg, png, pdf).

    Raises:
        RenderError: the graphviz package or the ``dot`` program is missing, or ``dot`` failed.
    """
    if find_dot() is None:
        raise RenderError(INSTALL_DOT.format(what=f".{fmt}"))
    try:
        import graphviz
    except ImportError:
        raise RenderError(
            f"drawing .{fmt} needs the graphviz Python package: pip install graphviz "
            "(or write a .dot or .mmd file instead)"
        ) from None
    try:
        return graphviz.Source(dot_source).pipe(format=fmt)
    except graphviz.ExecutableNotFound:
        raise RenderError(INSTALL_DOT.format(what=f".{fmt}")) from None
    except graphviz.CalledProcessError as exc:
        stderr = exc.stderr.decode(errors="replace").strip() if isinstance(exc.stderr, bytes) else exc.stderr
        raise RenderError(f"dot failed drawing .{fmt}: {stderr}") from None


def to_svg(compiled: CompiledGraph, rankdir: str = "LR") -> str:
    """The diagram as SVG text (needs Graphviz)."""
    return pipe(to_dot(compiled, rankdir), "svg").decode("utf-8")


def render(compiled: CompiledGraph, path: str | os.PathLike[str], rankdir: str = "LR") -> str:
    """Write the diagram to ``path``: ``.dot``, ``.mmd``, or ``.svg``/``.png``/``.pdf`` through Graphviz.

    Returns:
        The path written.

    Raises:
        RenderError: an unknown extension, or Graphviz missing for a drawn format.
    """
    return write(path, lambda: to_dot(compiled, rankdir), lambda: to_mermaid(compiled, rankdir))


def write(path: str | os.PathLike[str], dot: Callable[[], str], mermaid: Callable[[], str] | None = None) -> str:
    """Write a diagram to ``path`` in the format its extension names, made by ``dot`` (DOT text) or ``mermaid``.

    ``mermaid`` None: the diagram has no Mermaid form (the live view's), and ``.mmd`` is refused.

    Raises:
        RenderError: an unknown extension, or Graphviz missing for a drawn format.
    """
    target = os.fspath(path)
    ext = os.path.splitext(target)[1].lower()
    formats = FORMATS if mermaid is not None else tuple(f for f in FORMATS if f != ".mmd")
    if ext not in formats:
        raise RenderError(
            f"{target}: cannot tell the diagram format from {ext or 'a missing extension'!r}; "
            f"use one of {', '.join(formats)}"
        )
    if ext == ".dot":
        data = dot().encode("utf-8")
    elif ext == ".mmd" and mermaid is not None:
        data = mermaid().encode("utf-8")
    else:
        data = pipe(dot(), ext[1:])
    with open(target, "wb") as f:
        f.write(data)
    return target
