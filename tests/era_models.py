"""Deployments written for each handle API, for tests/test_handle_era.py (a module: replicas import it)."""

import asyncio

import servegraph as serve
from servegraph.handle import DeploymentHandle


@serve.deployment
class Adder:
    def __call__(self, x: int) -> int:
        return x + 1


@serve.deployment
class NewAwaitsOnce:
    """Ray Serve 2.5+ code: one await gives the value."""

    def __init__(self, adder):
        self.adder = adder

    async def __call__(self, x: int) -> int:
        return await self.adder.remote(x) * 10


@serve.deployment
class NewSyncResult:
    """Ray Serve 2.5+ code in a sync method: .result()."""

    def __init__(self, adder: DeploymentHandle):
        self.adder = adder

    def __call__(self, x: int) -> list:
        return [self.adder.remote(x).result(), isinstance(self.adder, DeploymentHandle)]


@serve.deployment
class NewChained:
    """Ray Serve 2.5+ code: a response passed on unawaited, then awaited once; gather of responses."""

    def __init__(self, first, second):
        self.first = first
        self.second = second

    async def __call__(self, x: int) -> list:
        chained = await self.second.remote(self.first.remote(x))
        many = await asyncio.gather(*[self.first.remote(i) for i in range(3)])
        return [chained, list(many)]


@serve.deployment
class OldAwaitsTwice:
    """The seed's code: the first await gives an ObjectRef, the second the value."""

    def __init__(self, adder):
        self.adder = adder

    async def __call__(self, x: int) -> int:
        ref = await self.adder.remote(x)
        return await ref


@serve.handle_api("new")
@serve.deployment
class ExplicitNew:
    def __init__(self, adder):
        self.adder = adder

    async def __call__(self, x):
        value = await self.adder.remote(x)
        return value


@serve.deployment
class Undecided:
    def __init__(self, adder):
        self.adder = adder

    async def __call__(self, x):
        value = await self.adder.remote(x)
        return value


new_app = NewAwaitsOnce.bind(Adder.bind())
old_app = OldAwaitsTwice.bind(Adder.bind())
