"""Helpers shared by the test modules: source lines, error locations, and the examples' expected results."""

from __future__ import annotations

import dataclasses
import importlib
import os
import sys
from collections.abc import Callable
from typing import Any


def here() -> int:
    """The line number of the caller: ``line = here() + 1`` names the line below."""
    return sys._getframe(1).f_lineno


def assert_located(error: BaseException | str, line: int) -> None:
    """The message names the caller's file and ``line``, as every servegraph error names its ``.bind()`` site."""
    filename = os.path.basename(sys._getframe(1).f_code.co_filename)
    text = str(error)
    assert f"{filename}:{line}" in text, f"expected {filename}:{line} in: {text}"


class JSONRequest:
    """Stands in for a starlette Request when a handle, not HTTP, calls an ingress that reads ``await request.json()``."""

    def __init__(self, body: Any):
        self._body = body

    async def json(self) -> Any:
        return self._body


@dataclasses.dataclass(frozen=True)
class ExampleCase:
    """One example in examples/: the graph to deploy, the requests to send its handle, the answers expected."""

    module: str
    attr: str
    send: Callable[[Any], list]
    expected: list

    @property
    def app(self) -> Any:
        return getattr(importlib.import_module(self.module), self.attr)


def _hello(handle: Any) -> list:
    return [
        handle.remote(JSONRequest({"language": "spanish", "name": "Dora"})),
        handle.remote(JSONRequest({"language": "french", "name": "Dora"})),
        handle.remote(JSONRequest({"language": "german", "name": "Dora"})),
    ]


def _no_argument(handle: Any) -> list:
    return [handle.remote() for _ in range(4)]


def _chain(handle: Any) -> list:
    return [handle.remote("Serve")]


def _method(handle: Any) -> list:
    return [handle.remote("hi"), handle.method1.remote("hi")]


def _pipeline(handle: Any) -> list:
    return [handle.remote({"text": "  Hello World "}), handle.remote({"text": "xyz"})]


#: Every example, with what its handle answers (the same on Ray and in local testing mode).
EXAMPLE_CASES = (
    ExampleCase("hello", "language_classifier", _hello, ["Hola Dora", "Bonjour Dora", "Please try again."]),
    ExampleCase("sync_handle", "app", _no_argument, ["hello"] * 4),
    ExampleCase("async_handle", "app", _no_argument, ["hello"] * 4),
    ExampleCase("async_handle_chain", "app", _chain, ["hello hello Serve"]),
    ExampleCase("handle_method", "app", _method, ["__call__: hi", "Method1: hi"]),
    ExampleCase(
        "pipeline",
        "app",
        _pipeline,
        [{"length": 11.0, "vowels": 3, "score": 14.0}, {"length": 3.0, "vowels": 0, "score": 3.0}],
    ),
)


def user_env(home: os.PathLike[str] | str, **extra: str) -> dict[str, str]:
    """The environment of a user's fresh shell: no RAY_* variable (the test session's ``ray.init`` sets some),
    a HOME of its own (so Ray's token and servegraph's cluster record are its own), servegraph importable from
    this tree."""
    from conftest import ROOT

    env = {k: v for k, v in os.environ.items() if k in ("PATH", "LANG", "LC_ALL", "TMPDIR", "TERM")}
    env.update(HOME=str(home), PYTHONPATH=str(ROOT))
    env.update(extra)
    return env


def cpu_seconds(pid: int) -> float:
    """CPU time (user + system) process ``pid`` has used so far."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def running(pid: int) -> bool:
    """Whether process ``pid`` runs (an ended process not yet reaped by its parent, a zombie, does not)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except (OSError, IndexError):
        return False
