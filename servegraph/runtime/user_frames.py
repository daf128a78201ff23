"""Which traceback frames are the user's: decided by the package a file belongs to, not by words in its path.

A user's code may well live in a folder called ``servegraph`` (git names a clone after its
repository) or ``ray``; only files inside the directories servegraph and Ray are imported
from are theirs.
"""

from __future__ import annotations

import os

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
