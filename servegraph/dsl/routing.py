"""Routing nodes: a request takes one branch of a ``Switch`` (by a value's key, or by predicates) or of a
``Split`` (at random, by weight), and only that branch runs.

They record what the user wrote, as every node does; the compiler checks them against the graph (keys
against the value's annotation, branch outputs against their consumer) and the plan runs them. The
rules for weights live here, once: :func:`weights_problem` judges the code's weights and a deploy
config's alike.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

from ..errors import RoutingError
from .callsite import CallSite, diagnostic, user_call_site
from .nodes import DAGNode, DeploymentNode

#: What a switch key may be: plain values a config, a diagram and the JSON IR can all write.
KEY_TYPES = (str, int, bool, type(None))

#: Split weights are whole percentages that sum to this (as KServe's InferenceGraph requires).
WEIGHT_TOTAL = 100


def key_label(key: Any) -> str:
    """A switch key as diagrams and messages show it: a string as it is, anything else as Python writes it.

    >>> key_label("spanish"), key_label(1), key_label(None)
    ('spanish', '1', 'None')
    """
    return key if isinstance(key, str) else repr(key)


def predicate_label(predicate: Callable[..., Any], position: int) -> str:
    """A predicate's name, or ``case N`` for a lambda."""
    name = getattr(predicate, "__name__", "")
    return name if name and name != "<lambda>" else f"case {position}"


def weights_problem(weights: Mapping[str, Any], branches: Sequence[str]) -> str | None:
    """Why ``weights`` cannot split traffic between ``branches``, or None if they can.

    Weights are whole numbers from 0 to 100, one per branch, summing to 100.

    >>> weights_problem({"stable": 80, "canary": 20}, ["stable", "canary"]) is None
    True
    >>> weights_problem({"stable": 80, "canary": 30}, ["stable", "canary"])
    'weights must sum to 100, got 110 (stable 80, canary 30)'
    >>> weights_problem({"stable": 100}, ["stable", "canary"])
    "no weight for branch 'canary'"
    """
    for name in weights:
        if name not in branches:
            return f"a weight for {name!r}, which is not a branch (branches: {', '.join(branches)})"
    for name in branches:
        if name not in weights:
            return f"no weight for branch {name!r}"
    for name in branches:
        weight = weights[name]
        if isinstance(weight, bool) or not isinstance(weight, int):
            return f"the weight of {name!r} must be a whole number, got {weight!r}"
        if weight < 0:
            return f"the weight of {name!r} is negative ({weight})"
    total = sum(weights[name] for name in branches)
    if total != WEIGHT_TOTAL:
        shown = ", ".join(f"{name} {weights[name]}" for name in branches)
        return f"weights must sum to {WEIGHT_TOTAL}, got {total} ({shown})"
    return None


def _refuse(what: str, summary: str, site: CallSite, hint: str) -> RoutingError:
    return RoutingError(diagnostic("routing", summary + ";", site, subject=what, call=f"{what}()", hint=hint))


def _branch(what: str, label: str, node: Any, site: CallSite) -> DAGNode:
    """A branch must be a node with a value per request."""
    if not isinstance(node, DAGNode) or isinstance(node, DeploymentNode):
        got = node._label() + " (a bound deployment, which is a handle)" if isinstance(node, DeploymentNode) else repr(node)
        raise _refuse(
            what,
            f"branch {label} is {got}, not a graph node with a value per request",
            site,
            "give each branch a node such as model.method.bind(inp) or f.bind(inp).",
        )
    return node


class Switch(DAGNode):
    """One branch per request, chosen from ``value`` (an InputNode read or a node's output).

    ``Switch(value, {"spanish": a, "french": b}, default=c)`` takes the branch whose key equals the
    value; ``Switch(value, [(is_long, a), (is_short, b)])`` the first whose predicate is true of it.
    Only the chosen branch runs; the other branches' calls are never sent. A value matching no branch,
    with no default, fails the request with :class:`~servegraph.errors.NoRouteError` (HTTP 400).

    Raises:
        RoutingError: no branches, a branch that is not a graph node, a key that is not a string,
            number, bool or None, a predicate that is not callable.
    """

    _kind = "switch"
    _missing: Any = object()

    def __init__(
        self,
        value: DAGNode,
        cases: Mapping[Any, DAGNode] | Sequence[tuple[Callable[[Any], Any], DAGNode]],
        *,
        default: DAGNode | Any = _missing,
        _call_site: CallSite | None = None,
    ):
        site = user_call_site(_call_site)
        if not isinstance(value, DAGNode) or isinstance(value, DeploymentNode):
            got = value._label() + " (a bound deployment)" if isinstance(value, DeploymentNode) else repr(value)
            raise _refuse(
                "Switch",
                f"the value to switch on is {got}, not a graph node with a value per request",
                site,
                "switch on an InputNode read (inp['lang']) or a node's output (detect.bind(inp)).",
            )
        branches: list[DAGNode] = []
        labels: list[str] = []
        choices: list[Any] = []
        if isinstance(cases, Mapping):
            self._mode = "keys"
            for key, node in cases.items():
                if not isinstance(key, KEY_TYPES):
                    raise _refuse(
                        "Switch",
                        f"key {key!r} is a {type(key).__name__}",
                        site,
                        "keys must be strings, whole numbers, booleans or None (what a config and the JSON IR can hold).",
                    )
                labels.append(key_label(key))
                choices.append(key)
                branches.append(_branch("Switch", key_label(key), node, site))
        elif isinstance(cases, (list, tuple)):
            self._mode = "predicates"
            for i, case in enumerate(cases, 1):
                if not (isinstance(case, tuple) and len(case) == 2 and callable(case[0])):
                    raise _refuse(
                        "Switch",
                        f"case {i} is {case!r}, not a (predicate, node) pair",
                        site,
                        "write predicates as [(is_long, long_model.bind(inp)), ...], tried in order.",
                    )
                labels.append(predicate_label(case[0], i))
                choices.append(case[0])
                branches.append(_branch("Switch", labels[-1], case[1], site))
        else:
            raise _refuse(
                "Switch",
                f"the cases are a {type(cases).__name__}",
                site,
                "give a dict of key -> node, or a list of (predicate, node) pairs.",
            )
        if not branches:
            raise _refuse(
                "Switch",
                "the switch has no branches",
                site,
                "give it at least one key (or predicate) and its node; a switch with only a default is that node.",
            )
        self._has_default = default is not Switch._missing
        if self._has_default:
            branches.append(_branch("Switch", "default", default, site))
            labels.append("default")
            choices.append(None)
        self._labels = tuple(labels)
        self._choices = tuple(choices)
        super().__init__((value, *branches), {}, site)

    def _label(self) -> str:
        return "Switch"


class Split(DAGNode):
    """One branch per request, chosen at random by weight: a canary or an A/B test.

    ``Split({"stable": a, "canary": b}, weights={"stable": 90, "canary": 10}, name="rollout")``.
    Weights are whole percentages summing to 100. A deploy config carries them as the ``user_config`` of
    its ``DAGDriver`` entry (``splits: {<name>: {branch: weight}}``), so an operator shifts traffic by
    editing the config and deploying it again; no replica restarts.

    Raises:
        RoutingError: no branches, weights that are negative, not whole numbers, missing for a branch,
            given for no branch or not summing to 100, a name that is not an identifier.
    """

    _kind = "split"

    def __init__(
        self,
        branches: Mapping[str, DAGNode],
        *,
        weights: Mapping[str, int],
        name: str = "split",
        _call_site: CallSite | None = None,
    ):
        site = user_call_site(_call_site)
        if not isinstance(name, str) or not name.isidentifier():
            raise _refuse("Split", f"name {name!r} is not an identifier", site, "name it like a variable: name='rollout'.")
        if not isinstance(branches, Mapping) or not branches:
            raise _refuse(
                "Split", "the split has no branches", site, "give it a dict of branch name -> node, e.g. {'stable': a, 'canary': b}."
            )
        for label in branches:
            if not isinstance(label, str) or not label.isidentifier():
                raise _refuse(
                    "Split", f"branch name {label!r} is not an identifier", site, "name branches like variables: 'stable', 'canary'."
                )
        nodes = [_branch("Split", label, node, site) for label, node in branches.items()]
        if not isinstance(weights, Mapping):
            raise _refuse("Split", f"weights are a {type(weights).__name__}", site, "give weights as a dict of branch name -> percentage.")
        problem = weights_problem(weights, list(branches))
        if problem is not None:
            raise _refuse("Split", problem, site, f"give each branch a whole percentage; together they make {WEIGHT_TOTAL}.")
        self._name = name
        self._labels = tuple(branches)
        self._choices = tuple(weights[label] for label in branches)
        super().__init__(tuple(nodes), {}, site)

    @property
    def name(self) -> str:
        return self._name

    def _label(self) -> str:
        return f"Split {self._name}"


__all__ = ["KEY_TYPES", "WEIGHT_TOTAL", "Split", "Switch", "key_label", "predicate_label", "weights_problem"]
