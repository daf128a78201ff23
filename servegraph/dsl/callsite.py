"""Where in the user's code a graph node was bound."""

from __future__ import annotations

import dataclasses
import functools
import os
import sys
from types import FrameType
from typing import Any

from ..errors import Diagnostic

_PACKAGE_DIR = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@dataclasses.dataclass(frozen=True, slots=True)
class CallSite:
    """A ``.bind()`` call site (Python) or a token's position (a ``.sg`` file)."""

    file: str
    line: int
    col: int = 0

    def __str__(self) -> str:
        if self.col:
            return f"{self.file}:{self.line}:{self.col}"
        return f"{self.file}:{self.line}"


UNKNOWN = CallSite("<unknown>", 0)


def diagnostic(code: str, summary: str, site: CallSite | None, **fields: Any) -> Diagnostic:
    """A :class:`~servegraph.errors.Diagnostic` located at ``site`` (the other fields as given)."""
    if site is None:
        return Diagnostic(code, summary, **fields)
    return Diagnostic(code, summary, file=site.file, line=site.line, col=site.col or None, **fields)


def _display_path(path: str) -> str:
    try:
        rel = os.path.relpath(path)
    except ValueError:  # another drive on Windows
        return path
    return path if rel.startswith("..") else rel


def user_call_site(override: CallSite | None = None) -> CallSite:
    """The first stack frame outside servegraph: the line the user wrote."""
    if override is not None:
        return override
    frame: FrameType | None = sys._getframe(1)
    cwd = os.getcwd()
    while frame is not None:
        shown = _user_path(frame.f_code.co_filename, cwd)
        if shown is not None:
            return CallSite(shown, frame.f_lineno)
        frame = frame.f_back
    return UNKNOWN


@functools.lru_cache(maxsize=256)
def _user_path(filename: str, cwd: str) -> str | None:
    """How a frame's file is shown, or None for servegraph's own files (cached: a graph of
    10,000 nodes asks for the same few files 10,000 times; ``cwd`` is part of the key)."""
    if os.path.abspath(filename).startswith(_PACKAGE_DIR + os.sep):
        return None
    return _display_path(filename)
