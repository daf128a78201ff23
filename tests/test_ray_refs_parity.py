"""Refs nested in containers arrive as ObjectRefs, exactly as Ray passes them; only top-level ones are resolved.

Ray's documented patterns ``sum(ray.get(value_refs))`` and ``await asyncio.gather(*refs)``
work through handles and in InputNode graphs.
"""

from __future__ import annotations

import asyncio

import pytest
import ray

import servegraph as serve
from servegraph import InputNode


@serve.deployment
class Model:
    def __init__(self, weight: int):
        self.weight = weight

    def forward(self, input: int) -> int:
        return input + self.weight


@serve.deployment
def combine(value_refs):
    return sum(ray.get(value_refs))


@serve.deployment
class AsyncCombine:
    async def __call__(self, refs: list, *, bonus: int = 0) -> int:
        return sum(await asyncio.gather(*refs)) + bonus


@serve.deployment
class Kinds:
    def __call__(self, top, nested: list, *, key=None) -> dict:
        return {
            "top": type(top).__name__,
            "nested": [type(v).__name__ for v in nested],
            "key": type(key).__name__,
        }


@pytest.fixture(scope="module")
def graphs(deploy):
    # Ray's doc example (branching_input.py), with the handle graph instead of execute().
    model1 = Model.bind(0)
    model2 = Model.bind(1)
    with InputNode() as user_input:
        output1 = model1.forward.bind(user_input)
        output2 = model2.forward.bind(user_input)
        combine_output = combine.bind([output1, output2])
    with InputNode() as user_input:
        gathered = AsyncCombine.bind().__call__.bind(
            [Model.bind(10).forward.bind(user_input), Model.bind(20).forward.bind(user_input)], bonus=user_input
        )
    return {
        "sum": deploy(combine_output, name="refs-sum"),
        "gather": deploy(gathered, name="refs-gather"),
        "kinds": deploy(Kinds.bind(), name="refs-kinds"),
        "model": deploy(Model.bind(5), name="refs-model"),
    }


def test_ray_get_of_a_list_of_upstream_refs_in_a_graph(graphs):
    assert ray.get(graphs["sum"].remote(1), timeout=60) == 3


def test_asyncio_gather_of_upstream_refs_in_a_graph(graphs):
    # 1+10 + 1+20, plus the top-level keyword (the input itself, resolved).
    assert ray.get(graphs["gather"].remote(1), timeout=60) == 33


def test_through_a_handle_only_top_level_refs_are_resolved(graphs):
    model = graphs["model"]
    out = graphs["kinds"].remote(model.forward.remote(1), [model.forward.remote(2)], key=model.forward.remote(3))
    assert ray.get(out, timeout=60) == {"top": "int", "nested": ["ObjectRef"], "key": "int"}


def test_a_list_of_refs_through_a_handle_is_summed_with_ray_get(graphs):
    model = graphs["model"]
    combined = serve.get_deployment_handle("combine", "refs-sum").options(use_new_handle_api=False)
    assert ray.get(combined.remote([model.forward.remote(1), model.forward.remote(2)]), timeout=60) == 13


def test_local_testing_mode_passes_nested_results_through_too():
    with InputNode() as user_input:
        gathered = AsyncCombine.bind().__call__.bind(
            [Model.bind(10).forward.bind(user_input), Model.bind(20).forward.bind(user_input)], bonus=user_input
        )
    assert serve.run(gathered, _local_testing_mode=True).remote(1).result() == 33
