"""Graph nodes expose no public attributes that could hide a user's input keys or method names."""

import pytest

import servegraph as serve
from servegraph import InputNode
from servegraph.compiler import ir


@serve.deployment
class Tree:
    """A class whose method names collide with what a node could have called its own attributes."""

    def children(self, x):
        return x

    def deployment(self, x):
        return x

    def call_site(self, x):
        return x


@serve.deployment
class NoCall:
    def run(self, x):
        return x


@pytest.mark.parametrize("method", ["children", "deployment", "call_site"])
def test_user_methods_named_like_node_internals_bind(method):
    with InputNode() as inp:
        node = getattr(Tree.bind(), method).bind(inp)
    step = serve.compile(node).plan.steps[-1]
    assert (step.deployment, step.method) == ("Tree", method)


@pytest.mark.parametrize("attr", ["key", "parent", "access", "children", "call_site"])
def test_input_attributes_named_like_node_internals_read_the_input(attr):
    with InputNode() as inp:
        node = Tree.bind().children.bind(getattr(inp, attr))
    plan = serve.compile(node).plan
    (read,) = [s for s in plan.steps if s.kind == ir.INPUT_ATTR]
    assert read.access[1:] == ("attr", attr)


def test_call_bind_on_a_class_without_call_fails_in_bind():
    with pytest.raises(serve.BindError, match=r"test_node_surface.py:\d+: NoCall.__call__.bind\(\): NoCall has no method '__call__'"):
        NoCall.bind().__call__.bind(1)
