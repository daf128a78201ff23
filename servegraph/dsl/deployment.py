"""``@serve.deployment`` and the :class:`Deployment` it makes."""

from __future__ import annotations

import inspect
from collections.abc import Callable
from typing import Any, overload

from ..errors import BindError
from .callsite import CallSite, diagnostic, user_call_site
from .nodes import DAGNode, DeploymentNode, FunctionNode
from .options import DeploymentOptions, make_options
from .signature import BIND_HINT, bind_problem, describe_signature


class Deployment:
    """A class or function to be served by replicas, with its options.

    Made by ``@serve.deployment``; ``.options()`` returns a copy with overrides,
    ``.bind()`` makes a graph node.
    """

    def __init__(self, func_or_class: type | Callable[..., Any], options: DeploymentOptions):
        self._target = func_or_class
        self._options = options

    # Ray Serve's attribute names ---------------------------------------------
    @property
    def func_or_class(self) -> type | Callable[..., Any]:
        return self._target

    @property
    def name(self) -> str:
        return self._options.name or self._target.__name__

    @property
    def is_function(self) -> bool:
        return not inspect.isclass(self._target)

    @property
    def deployment_options(self) -> DeploymentOptions:
        return self._options

    @property
    def num_replicas(self) -> int:
        return self._options.replicas()

    @property
    def user_config(self) -> Any:
        return self._options.user_config

    @property
    def max_ongoing_requests(self) -> int:
        return self._options.max_ongoing_requests

    @property
    def ray_actor_options(self) -> dict[str, Any]:
        return self._options.actor_options()

    def options(self, **kwargs: Any) -> Deployment:
        """A copy of this deployment with some options overridden."""
        return Deployment(self._target, make_options(self._options, _call_site=user_call_site(), **kwargs))

    def set_options(self, **kwargs: Any) -> None:
        """Ray 2.x's in-place ``options``: change this deployment's options (checked as ``options`` checks them)."""
        self._options = make_options(self._options, _call_site=user_call_site(), **kwargs)

    def bind(self, *args: Any, _call_site: CallSite | None = None, **kwargs: Any) -> DAGNode:
        """Bind constructor (class) or call (function) arguments into a graph node.

        Raises:
            BindError: the arguments do not fit the signature.
        """
        site = user_call_site(_call_site)
        no_init = not self.is_function and self._target.__init__ is object.__init__  # type: ignore[misc]
        if self.is_function:
            fn, drop_self, what = self._target, False, self.name
        elif no_init:
            # No __init__ anywhere: object.__init__'s signature (*args, **kwargs) would accept anything,
            # but the replica's ``cls(*args)`` then fails; the class's own signature says what it takes
            # (``()`` unless __new__ or a metaclass says otherwise, known without inspect's slow path).
            plain = self._target.__new__ is object.__new__ and type(self._target).__call__ is type.__call__
            fn, drop_self, what = (_takes_nothing if plain else self._target), False, self.name
        else:
            # The class's own __init__, looked up on the class (mypy reads it as an instance lookup).
            fn, drop_self, what = self._target.__init__, True, f"{self.name}.__init__"  # type: ignore[misc]
        # ``f.bind()`` with nothing bound is how a function becomes an ingress (as in Ray Serve):
        # it is then called with each request, so its parameters are not missing.
        ingress_form = self.is_function and not args and not kwargs
        problem = None if ingress_form else bind_problem(fn, args, kwargs, drop_self=drop_self)
        if problem is not None:
            raise BindError(
                diagnostic(
                    "bind-arguments",
                    problem.text,
                    site,
                    subject=self.name,
                    call=f"{self.name}.bind()",
                    expected=describe_signature(what, fn) + (f" ({self.name} defines no __init__)" if no_init else ""),
                    hint=BIND_HINT,
                    keyword=problem.keyword,
                )
            )
        if self.is_function:
            return FunctionNode(self, args, kwargs, site)
        return DeploymentNode(self, args, kwargs, site)

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        raise TypeError(
            f"Deployment {self.name!r} cannot be called directly: use {self.name}.bind(...) to add it "
            "to a graph, then serve.run() the graph."
        )

    def __repr__(self) -> str:
        return f"Deployment(name={self.name!r}, num_replicas={self.num_replicas})"


def _takes_nothing():  # no return annotation: it would show in the message
    """The signature of a class with neither ``__init__`` nor ``__new__``: no arguments."""


@overload
def deployment(_func_or_class: Callable[..., Any]) -> Deployment: ...


@overload
def deployment(_func_or_class: str | None = None, **options: Any) -> Callable[[Callable[..., Any]], Deployment]: ...


def deployment(_func_or_class: Callable[..., Any] | str | None = None, **options: Any) -> Any:
    """Make a class or function a deployment: ``@serve.deployment``, ``@serve.deployment(...)``.

    As in Ray Serve, the name may come first: ``@serve.deployment("name", num_replicas=2)``.
    An ``async def __init__`` is awaited on the replica before it takes requests.

    Raises:
        OptionError: an unknown option (the message names the closest valid one).
        OptionValueError: a value outside its accepted range.
    """
    if isinstance(_func_or_class, str):
        if "name" in options:
            raise TypeError(f"@serve.deployment got the name twice: {_func_or_class!r} and name={options['name']!r}")
        options["name"], _func_or_class = _func_or_class, None
    validated = make_options(_call_site=user_call_site(), **options)

    def decorate(target: Callable[..., Any]) -> Deployment:
        if not callable(target):
            raise TypeError(f"@serve.deployment needs a class or function, got {type(target).__name__}")
        return Deployment(target, validated)

    if _func_or_class is not None:
        return decorate(_func_or_class)
    return decorate
