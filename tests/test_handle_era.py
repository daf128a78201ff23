"""Constructor handles follow the API a deployment's code was written for (see servegraph/_handle_era.py)."""

from __future__ import annotations

import asyncio

import era_models as m
import pytest
import ray

from servegraph._handle_era import NEW, OLD, RAY_ENV, handle_era


def era(deployment) -> str:
    return handle_era(deployment.func_or_class).api


def test_the_code_decides():
    assert era(m.NewAwaitsOnce) == NEW
    assert era(m.NewChained) == NEW
    assert era(m.OldAwaitsTwice) == OLD
    reason = handle_era(m.OldAwaitsTwice.func_or_class).reason
    assert "awaits 'ref'" in reason and "era_models.py:" in reason


class _OldRayGetsTheAwaitedCall:  # Ray Serve 2.0-2.4's tests write it so (test_deployment_graph.py)
    def __init__(self, h):
        self.h = h

    async def __call__(self, x):
        return ray.get(await self.h.remote(x))


class _OldRayGetsAList:
    def __init__(self, h):
        self.h = h

    async def __call__(self, x):
        first = await self.h.remote(x)
        second = await self.h.remote(x + 1)
        return ray.get([first, second])


class _OldGathersTheRefs:
    def __init__(self, h):
        self.h = h

    async def __call__(self, x):
        first = await self.h.remote(x)
        return await asyncio.gather(first)


class _NewGathersResponses:
    def __init__(self, h):
        self.h = h

    async def __call__(self, x):
        return [await self.h.remote(x), *await asyncio.gather(self.h.remote(x + 1))]


def test_an_awaited_call_handed_to_what_takes_refs_is_the_old_api():
    found = handle_era(_OldRayGetsTheAwaitedCall)
    assert found.api == OLD and "passes an awaited handle call to ray.get()" in found.reason
    found = handle_era(_OldRayGetsAList)
    assert found.api == OLD and "passes to ray.get() 'first'" in found.reason
    found = handle_era(_OldGathersTheRefs)
    assert found.api == OLD and "passes to asyncio.gather() 'first'" in found.reason
    found = handle_era(_NewGathersResponses)  # responses gathered unawaited are no evidence; the awaited value is
    assert found.api == NEW and "as its value" in found.reason


class _NewSubscriptsTheValue:  # Ray Serve 2.60's test_deploy_app_2 logging_config_test.Router writes it so
    def __init__(self, h):
        self.h = h

    async def __call__(self):
        info = await self.h.remote()
        info["b"] = 2
        return info


class _NewCallsItsMethods:
    def __init__(self, h):
        self.h = h

    async def __call__(self):
        words = await self.h.remote()
        total = 0
        for word in words:
            total += len(word)
        return words.upper(), total


class _OldUsesRefMethods:
    def __init__(self, h):
        self.h = h

    async def __call__(self):
        ref = await self.h.remote()
        print(ref.hex())
        return await ref


def test_an_awaited_call_named_then_used_as_a_value_is_the_new_api():
    found = handle_era(_NewSubscriptsTheValue)
    assert found.api == NEW and "subscripts 'info', an awaited handle call's result" in found.reason
    found = handle_era(_NewCallsItsMethods)
    assert found.api == NEW and "iterates over 'words'" in found.reason
    assert handle_era(_OldUsesRefMethods).api == OLD  # an ObjectRef's own methods are no value use


def test_annotations_decide_before_the_code():
    found = handle_era(m.NewSyncResult.func_or_class)
    assert found.api == NEW and "annotated DeploymentHandle" in found.reason


def test_an_explicit_choice_wins(monkeypatch):
    monkeypatch.setenv(RAY_ENV, "0")
    found = handle_era(m.ExplicitNew.func_or_class)
    assert found.api == NEW and "serve.handle_api('new')" in found.reason


def test_rays_switch_is_honoured(monkeypatch):
    monkeypatch.setenv(RAY_ENV, "1")
    assert era(m.OldAwaitsTwice) == NEW
    monkeypatch.setenv(RAY_ENV, "0")
    assert era(m.NewAwaitsOnce) == OLD


def test_the_modules_imports_decide_when_the_code_does_not():
    found = handle_era(m.Undecided.func_or_class)  # era_models imports DeploymentHandle
    assert found.api == NEW and "imports DeploymentHandle" in found.reason


def test_with_nothing_to_go_on_the_old_api():
    class Plain:
        def __init__(self, h):
            self.h = h

    found = handle_era(Plain)  # no await, no annotation, and this module imports neither handle class
    assert found.api == OLD and found.reason.startswith("nothing in the code says otherwise")
    source_less = type("Dynamic", (), {"__init__": lambda self, h: None, "__module__": "nowhere"})
    assert handle_era(source_less).api == OLD


def test_handle_api_refuses_other_values():
    import servegraph as serve

    with pytest.raises(ValueError, match="takes 'new'"):
        serve.handle_api("2.60")


@pytest.mark.ray
def test_both_eras_run_side_by_side(serve_app):
    import servegraph as serve

    assert serve.run(m.NewAwaitsOnce.bind(m.Adder.bind()), name="era-new", route_prefix=None).remote(1).result() == 20
    assert serve.run(m.NewSyncResult.bind(m.Adder.bind()), name="era-sync", route_prefix=None).remote(1).result() == [2, True]
    chained = serve.run(m.NewChained.bind(m.Adder.bind(), m.Adder.bind()), name="era-chain", route_prefix=None)
    assert chained.remote(1).result() == [3, [1, 2, 3]]
    assert serve.run(m.OldAwaitsTwice.bind(m.Adder.bind()), name="era-old", route_prefix=None).remote(1).result() == 2


def test_check_says_which_api_each_deployment_gets():
    from pathlib import Path

    from test_cli import servegraph

    tests = Path(__file__).parent
    new = servegraph("check", "era_models:new_app", "--resources", "CPU=8", cwd=tests)
    assert new.returncode == 0, new.stderr
    assert "NewAwaitsOnce: its constructor handles are DeploymentHandles: the code uses an awaited handle call as its value" in new.stdout
    old = servegraph("check", "era_models:old_app", "--resources", "CPU=8", cwd=tests)
    assert "OldAwaitsTwice: its constructor handles are RayServeDeploymentHandles: the code awaits 'ref'" in old.stdout


def test_a_deploys_record_does_not_outlive_the_switch_in_the_deploying_process(monkeypatch):
    from servegraph._handle_era import record_handle_era

    target = m.OldAwaitsTwice.func_or_class
    monkeypatch.delenv(RAY_ENV, raising=False)
    assert record_handle_era(target).api == OLD  # what a deploy records for its replicas
    monkeypatch.setenv(RAY_ENV, "1")
    assert era(m.OldAwaitsTwice) == NEW
