"""Which traceback frames are the user's: decided by the package a file belongs to, not by words in its path.

A user's code may well live in a folder called ``servegraph`` (git names a clone after its
repository) or ``ray``; only files inside the directories servegraph and Ray are imported
from are theirs.
"""

from __future__ import annotations

import os
import re
import traceback

import ray

import servegraph

#: The directories of the libraries between the user's code and the traceback's end.
LIBRARY_DIRS = tuple(
    os.path.normcase(os.path.dirname(os.path.abspath(module.__file__ or ""))) + os.sep for module in (servegraph, ray)
)


def is_user_file(filename: str) -> bool:
    """Whether a frame's file is the user's code (not servegraph's or Ray's own).

    >>> is_user_file(ray.__file__), is_user_file("/home/ana/servegraph/model.py")
    (False, True)
    """
    return not os.path.normcase(os.path.abspath(filename)).startswith(LIBRARY_DIRS)


def where(filename: str, lineno: int | str | None, name: str) -> str:
    """`` (file.py:12 in fn)``: how a one-line error names the user's frame."""
    return f" ({os.path.basename(filename)}:{lineno} in {name})"


def describe_user_error(exc: BaseException) -> str:
    """``Type: message (file.py:12 in fn)`` naming the innermost frame of the user's code.

    >>> describe_user_error(ValueError("bad model file"))
    'ValueError: bad model file'
    """
    frames = [f for f in traceback.extract_tb(exc.__traceback__) if is_user_file(f.filename)]
    return f"{type(exc).__name__}: {exc}" + (where(frames[-1].filename, frames[-1].lineno, frames[-1].name) if frames else "")


#: A frame's line in a formatted traceback: ``  File "/path/model.py", line 12, in __init__``.
_FRAME_LINE = re.compile(r'^\s*File "(?P<file>[^"]+)", line (?P<line>\d+), in (?P<name>\S+)\s*$', re.M)


def user_frame_in(text: str) -> str:
    """`` (file.py:12 in fn)`` for the innermost user frame a formatted traceback names, "" if none.

    For an error that crossed a process boundary (a Ray error): its traceback travels only as text.

    >>> user_frame_in('  File "/home/ana/model.py", line 12, in __init__\\n    raise ValueError()')
    ' (model.py:12 in __init__)'
    """
    # Only absolute paths: Ray's compiled modules name theirs relative (``python/ray/_raylet.pyx``).
    frames = [m for m in _FRAME_LINE.finditer(text) if os.path.isabs(m["file"]) and is_user_file(m["file"])]
    return where(frames[-1]["file"], frames[-1]["line"], frames[-1]["name"]) if frames else ""
