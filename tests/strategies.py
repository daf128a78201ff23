"""Hypothesis strategies: random deployment graphs built with the Python DSL, and mutations of .sg text.

Graphs use the deployments in ``sg_models`` and only what compiles: constructors
get plain values and handles, methods and functions get per-request values too,
and every per-request node reaches the output (so the unreachable check stays quiet).
"""

from __future__ import annotations

from typing import Any

import sg_models
from hypothesis import strategies as st

from servegraph import DAGDriver, InputNode, MultiOutputNode

_json_leaf = (
    st.none()
    | st.booleans()
    | st.integers(min_value=-(10**12), max_value=10**12)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=8)
)

#: Plain values a .sg file can write: strings, numbers, true/false/null, lists and maps.
plain_values = st.recursive(
    _json_leaf,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=5), inner, max_size=3),
    max_leaves=6,
)

_options = st.fixed_dictionaries(
    {},
    optional={
        "num_replicas": st.integers(1, 4),
        "max_ongoing_requests": st.integers(1, 10),
        "user_config": plain_values,
        "ray_actor_options": st.fixed_dictionaries({"num_cpus": st.floats(0, 2)}),
        "name": st.sampled_from(["Alpha", "Beta", "Model", "with space"]),
        "autoscaling_config": st.fixed_dictionaries({"min_replicas": st.integers(0, 1), "max_replicas": st.integers(2, 4)}),
    },
).map(lambda o: {**o, "num_replicas": None} if "autoscaling_config" in o else o)


@st.composite
def graphs(draw: st.DrawFn) -> Any:
    """A bound graph's output node."""
    inp = InputNode() if draw(st.booleans()) else None
    values: list[Any] = []  # per-request nodes
    used: set[int] = set()
    deployments: list[Any] = []
    if inp is not None:
        values.append(inp)
        for access in draw(st.lists(st.sampled_from(["item", "index", "attr"]), max_size=2)):
            part = {"item": lambda: inp["text"], "index": lambda: inp[0], "attr": lambda: inp.field}[access]()
            values.append(part)

    def deployment_node() -> Any:
        cls = draw(st.sampled_from([sg_models.Model, sg_models.Scaled]))
        options = draw(_options)
        if options:
            cls = cls.options(**options)
        handles = draw(st.lists(st.sampled_from(deployments), max_size=2)) if deployments else []
        args = [*handles, *draw(st.lists(plain_values, max_size=2))]
        kwargs = draw(st.dictionaries(st.sampled_from(["k", "weight", "config"]), plain_values, max_size=2))
        node = cls.bind(*args, **kwargs)
        deployments.append(node)
        return node

    def argument() -> Any:
        choice = draw(st.integers(0, 3))
        if choice == 0 and values:
            value = draw(st.sampled_from(values))
            used.add(id(value))
            return value
        if choice == 1 and deployments:
            return draw(st.sampled_from(deployments))
        if choice == 2 and values:
            value = draw(st.sampled_from(values))
            used.add(id(value))
            return [value, {"nested": draw(plain_values)}]
        return draw(plain_values)

    for _ in range(draw(st.integers(1, 5))):
        action = draw(st.sampled_from(["deployment", "method", "call", "function"]))
        if action == "deployment" or not deployments and action in ("method", "call"):
            deployment_node()
            continue
        args = [argument() for _ in range(draw(st.integers(0, 2)))]
        if action == "function":
            fn = sg_models.combine
            options = draw(_options)
            options.pop("user_config", None)  # a function has no reconfigure() to take one
            if options:
                fn = fn.options(**options)
            values.append(fn.bind(*args))
        else:
            target = draw(st.sampled_from(deployments))
            method = target.run if target._deployment.func_or_class is sg_models.Scaled.func_or_class else (
                target.predict if action == "method" else target.__call__
            )
            values.append(method.bind(*args))

    sinks = [v for v in values if id(v) not in used and v is not inp]
    if inp is not None and not sinks:
        sinks = [inp]
    if not sinks:
        root: Any = deployments[-1]
    elif len(sinks) == 1 and draw(st.booleans()):
        root = sinks[0]
    else:
        root = MultiOutputNode(sinks)
    if draw(st.integers(0, 4)) == 0:
        root = DAGDriver.bind(root, http_adapter=draw(st.sampled_from([None, sg_models.adapter])))
    return root


_NOISE = st.sampled_from(list("(){}[],.:=\"'#\n\t -_0123456789abcdefghijklmnopqrstuvwxyzAZ@\\") + [
    "graph",
    "output",
    "input",
    "from",
    "import",
    "deployment",
    "at",
    "true",
    "null",
    "\u00e9",
    "\x00",
])


@st.composite
def mutations(draw: st.DrawFn, text: str) -> str:
    """``text`` cut short, or with a few slices deleted, duplicated or replaced by noise."""
    if draw(st.booleans()):
        return text[: draw(st.integers(0, len(text)))]
    for _ in range(draw(st.integers(1, 4))):
        start = draw(st.integers(0, len(text)))
        end = draw(st.integers(start, min(len(text), start + 12)))
        how = draw(st.sampled_from(["delete", "duplicate", "replace"]))
        if how == "delete":
            text = text[:start] + text[end:]
        elif how == "duplicate":
            text = text[:end] + text[start:end] + text[end:]
        else:
            text = text[:start] + "".join(draw(st.lists(_NOISE, min_size=1, max_size=4))) + text[end:]
    return text


@st.composite
def respaced(draw: st.DrawFn, text: str) -> str:
    """``text`` with its tokens re-joined by random whitespace and comments (same meaning, other layout)."""
    from servegraph.grammar.syntax import parser

    gaps = st.sampled_from([" ", "  ", "\n", "\n\n", "\n\n\n", "\t", " # note\n", "\n# own line\n", "  #\n"])
    out = []
    for token in parser().lex(text):
        out.append(str(token))
        out.append(draw(gaps))
    return "".join(out)
