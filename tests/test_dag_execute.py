"""Ray's DAG API on a bound graph: ``ray.get(dag.execute(x))`` runs the graph once on Ray, unserved."""

from __future__ import annotations

import ray

import servegraph as serve
from servegraph import InputNode


@serve.deployment
class Scale:
    def __init__(self, factor: int):
        self.factor = factor

    def forward(self, x: int) -> int:
        return x * self.factor


@serve.deployment
def add(a: int, b: int) -> int:
    return a + b


def test_execute_runs_an_inputnode_graph_on_ray_without_a_route(serve_app):
    with InputNode() as inp:
        dag = add.bind(Scale.bind(2).forward.bind(inp), Scale.bind(10).forward.bind(inp))
    assert ray.get(dag.execute(1)) == 12
    assert ray.get(dag.execute(3)) == 36  # the same application again: nothing restarted
    apps = [name for name in serve.status().applications if name.startswith("execute-")]
    assert len(apps) == 1


def test_execute_on_a_deployment_gives_its_handle(serve_app):
    handle = Scale.bind(5).execute()
    assert handle.forward.remote(2).result(timeout_s=60) == 10
