"""``DAGDriver``: the ingress that runs an InputNode graph per request, as in Ray Serve."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from ..errors import BindError
from .callsite import CallSite, user_call_site
from .nodes import DAGNode


class DriverNode(DAGNode):
    """``DAGDriver.bind(dag)``: serves ``dag`` over HTTP and through handles.

    ``http_adapter`` turns the HTTP request into the graph's input; None takes
    the JSON body. A callable receives the ``starlette.requests.Request``.
    """

    _kind = "driver"

    def __init__(self, dag: DAGNode, http_adapter: Callable[..., Any] | None, call_site: CallSite):
        self._http_adapter = http_adapter
        super().__init__((dag,), {}, call_site)

    @property
    def dag(self) -> DAGNode:
        return self._bound_args[0]

    @property
    def http_adapter(self) -> Callable[..., Any] | None:
        return self._http_adapter

    def _label(self) -> str:
        return "DAGDriver"


class _DAGDriver:
    name = "DAGDriver"

    def bind(
        self,
        dag: DAGNode,
        *,
        http_adapter: None | str | Callable[..., Any] = None,
        _call_site: CallSite | None = None,
    ) -> DriverNode:
        site = user_call_site(_call_site)
        if not isinstance(dag, DAGNode):
            raise BindError(
                f"{site}: DAGDriver.bind() takes a graph node built with .bind(), got {type(dag).__name__}"
            )
        if isinstance(http_adapter, str):
            http_adapter = _import_attr(http_adapter, site)
        return DriverNode(dag, http_adapter, site)

    def options(self, **_: Any) -> _DAGDriver:
        return self


def _import_attr(path: str, site: CallSite) -> Callable[..., Any]:
    import importlib

    module, _, attr = path.replace(":", ".").rpartition(".")
    try:
        return getattr(importlib.import_module(module), attr)
    except (ImportError, AttributeError, ValueError) as exc:
        raise BindError(f"{site}: DAGDriver.bind(): http_adapter {path!r} does not resolve: {exc}") from None


DAGDriver = _DAGDriver()
