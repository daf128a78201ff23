"""``DAGDriver``: the ingress that runs an InputNode graph per request, as in Ray Serve."""

from __future__ import annotations

import inspect
from collections.abc import Callable
from typing import Any

from .._validation import route_prefix_problem
from ..errors import BindError, OptionError
from .callsite import CallSite, diagnostic, user_call_site
from .nodes import DAGNode


class DriverNode(DAGNode):
    """``DAGDriver.bind(dag)``: serves ``dag`` over HTTP and through handles.

    ``http_adapter`` turns the HTTP request into the graph's input, as a FastAPI
    dependency; None hands the graph the ``starlette.requests.Request``, as Ray
    Serve's default adapter does.
    """

    _kind = "driver"
    #: From ``DAGDriver.options(route_prefix=...)``; ``serve.run`` uses it when given none.
    _route_prefix: str | None = None

    def __init__(self, dag: DAGNode | dict[str, DAGNode], http_adapter: Callable[..., Any] | None, call_site: CallSite):
        self._http_adapter = http_adapter
        super().__init__((dag,), {}, call_site)

    @property
    def dag(self) -> DAGNode | dict[str, DAGNode]:
        """The graph, or ``{route: graph}`` for a driver serving several (``predict_with_route``)."""
        return self._bound_args[0]

    @property
    def http_adapter(self) -> Callable[..., Any] | None:
        return self._http_adapter

    def _label(self) -> str:
        return "DAGDriver"


class _DAGDriver:
    name = "DAGDriver"
    route_prefix: str | None = None

    def bind(
        self,
        dag: DAGNode | dict[str, DAGNode],
        *,
        http_adapter: None | str | Callable[..., Any] = None,
        input_schema: None | str | Callable[..., Any] = None,
        _call_site: CallSite | None = None,
    ) -> DriverNode:
        """``http_adapter`` (Ray 2.0's ``input_schema``) turns the HTTP request into the graph's input:
        a function taking FastAPI dependencies (the Request, typed query parameters, a body model),
        a pydantic model class, or an import path to one; by default the graph gets the Request."""
        site = user_call_site(_call_site)
        http_adapter = http_adapter if http_adapter is not None else input_schema
        if isinstance(dag, dict):
            for route, node in dag.items():
                problem = route_prefix_problem(route) if isinstance(route, str) else "must be a string"
                if problem is not None or not isinstance(node, DAGNode):
                    raise BindError(
                        diagnostic(
                            "bind-arguments",
                            f"DAGDriver.bind() takes {{route: graph node}}; route {route!r} "
                            + (problem or f"maps to {type(node).__name__}, not a graph node built with .bind()"),
                            site,
                            subject="DAGDriver",
                        )
                    )
        elif not isinstance(dag, DAGNode):
            raise BindError(
                diagnostic(
                    "bind-arguments",
                    "DAGDriver.bind() takes a graph node built with .bind()",
                    site,
                    subject="DAGDriver",
                    got=type(dag).__name__,
                    hint="(or a dict {route: graph node}): pass what .bind() returned.",
                )
            )
        if isinstance(http_adapter, str):
            http_adapter = _import_attr(http_adapter, site)
        if http_adapter is not None and not (inspect.isfunction(http_adapter) or _is_model(http_adapter)):
            raise BindError(
                diagnostic(
                    "bind-arguments",
                    "http_adapter must be a function or a pydantic model class",
                    site,
                    subject="DAGDriver",
                    call="DAGDriver.bind()",
                    got=f"{type(http_adapter).__name__} {http_adapter!r}",
                )
            )
        node = DriverNode(dag, http_adapter, site)
        node._route_prefix = self.route_prefix
        return node

    def options(self, *, route_prefix: str | None = None, **others: Any) -> _DAGDriver:
        """Ray's ``DAGDriver.options(route_prefix="/my-dag")``: where ``serve.run`` serves the graph
        when it is not told.

        Raises:
            OptionError: any other option: servegraph runs a DAGDriver's graph in its caller (the HTTP
                proxy, or the process holding the handle), so there is no driver replica to configure.
        """
        given = sorted(k for k, v in others.items() if v is not None)
        if given:
            raise OptionError(
                f"DAGDriver.options() got {', '.join(given)}: servegraph runs a DAGDriver's graph in its caller (the "
                "HTTP proxy, or the process holding the handle), not in a driver replica, so only route_prefix "
                "applies; set replicas and resources on the graph's deployments instead"
            )
        driver = _DAGDriver()
        driver.route_prefix = route_prefix if route_prefix is not None else self.route_prefix
        return driver


def _is_model(value: Any) -> bool:
    from pydantic import BaseModel

    return inspect.isclass(value) and issubclass(value, BaseModel)


def _import_attr(path: str, site: CallSite) -> Callable[..., Any]:
    import importlib

    module, _, attr = path.replace(":", ".").rpartition(".")
    try:
        return getattr(importlib.import_module(module), attr)
    except (ImportError, AttributeError, ValueError) as exc:
        raise BindError(
            diagnostic(
                "bind-arguments",
                f"http_adapter {path!r} does not resolve: {exc}",
                site,
                subject="DAGDriver",
                call="DAGDriver.bind()",
            )
        ) from None


DAGDriver = _DAGDriver()
