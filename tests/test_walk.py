"""The one walker for nested arguments, and argument types reaching replicas intact."""

from __future__ import annotations

from collections import namedtuple
from typing import NamedTuple

import pytest

import servegraph as serve
from servegraph import InputNode, _walk
from servegraph.compiler import load_ir

Point = namedtuple("Point", "x y")


class Pair(NamedTuple):
    left: object
    right: object


def test_map_leaves_keeps_namedtuples_and_walks_dict_keys():
    value = [Point(1, 2), (3,), {4: Pair(5, 6)}]
    out = _walk.map_leaves(value, lambda v: v + 1 if isinstance(v, int) else v)
    assert out == [Point(2, 3), (4,), {5: Pair(6, 7)}]
    assert type(out[0]) is Point and type(out[2][5]) is Pair and type(out[1]) is tuple


def test_map_leaves_returns_the_same_object_when_nothing_changes():
    value = {"a": [1, Point(2, 3)]}
    assert _walk.map_leaves(value, lambda v: v) is value


def test_subclasses_of_list_and_dict_are_leaves():
    class Tagged(list):
        pass

    tagged = Tagged([1])
    assert list(_walk.iter_leaves([tagged])) == [tagged]


def test_iter_leaves_puts_a_key_before_its_value():
    assert list(_walk.iter_leaves({"k": ["v"], "j": Point(1, 2)})) == ["k", "v", "j", 1, 2]


@serve.deployment
class Keeper:
    def __init__(self, point, nested):
        self.point = point
        self.nested = nested

    def __call__(self, value=None):
        return {"point": self.point, "nested": self.nested, "value": value}

    def types(self, value):
        return type(value).__name__, type(value[0]).__name__


@serve.deployment
def make_point(x):
    return Point(x, x + 1)


@serve.deployment
async def describe(pair):
    left = await pair.left  # nested in an argument, the producer's result arrives as a ref
    return type(pair).__name__, type(left).__name__, left, pair.right


def test_a_namedtuple_bound_to_a_constructor_stays_one_in_the_ir_and_its_json():
    compiled = serve.compile(Keeper.bind(Point(1, 2), {"k": Pair(3, Point(4, 5))}))
    (dep,) = compiled.ir.deployments
    assert type(dep.init_args[0]) is Point
    assert type(dep.init_args[1]["k"]) is Pair and type(dep.init_args[1]["k"].right) is Point
    loaded = load_ir(__import__("json").loads(compiled.with_app(import_path="test_walk:app").to_json()))
    assert loaded.deployments[0].init_args == dep.init_args
    assert type(loaded.deployments[0].init_args[1]["k"].right) is Point


def _per_request_graph():
    # The input is filled into the bound namedtuple per request (nested results would arrive as refs, as in Ray).
    with InputNode() as inp:
        return describe.bind(Pair(make_point.bind(inp), "right"))


def test_namedtuples_reach_the_replica_in_local_mode():
    handle = serve.run(Keeper.bind(Point(1, 2), {"k": Pair(3, 4)}), _local_testing_mode=True)
    got = handle.remote().result(timeout=30)
    assert type(got["point"]) is Point and type(got["nested"]["k"]) is Pair
    assert handle.types.remote(Pair(Point(1, 2), 0)).result(timeout=30) == ("Pair", "Point")
    graph = serve.run(_per_request_graph(), _local_testing_mode=True)
    assert graph.remote(1).result(timeout=30) == ("Pair", "Point", Point(1, 2), "right")


@pytest.mark.ray
def test_namedtuples_reach_the_replica_on_ray(serve_app, http_port):
    import ray

    handle = serve_app.run(Keeper.bind(Point(1, 2), {"k": Pair(3, 4)}), name="walk-keeper", route_prefix=None, port=http_port)
    got = ray.get(handle.remote(), timeout=60)  # a RayServeSyncHandle: .remote() gives an ObjectRef
    assert type(got["point"]) is Point and type(got["nested"]["k"]) is Pair
    assert ray.get(handle.types.remote(Pair(Point(1, 2), 0)), timeout=60) == ("Pair", "Point")
    graph = serve_app.run(_per_request_graph(), name="walk-graph", route_prefix=None, port=http_port)
    assert ray.get(graph.remote(1), timeout=60) == ("Pair", "Point", Point(1, 2), "right")
