"""A handle chain: one handle call's unawaited result passed straight into another.

Run it:  python async_handle_chain.py   -> hello hello Serve
"""

# __begin_async_handle_chain__
import asyncio

import ray

import servegraph as serve
from servegraph.handle import RayServeDeploymentHandle, RayServeSyncHandle


@serve.deployment
class Model:
    def __call__(self, inp):
        return "hello " + inp


@serve.deployment
class Chain:
    def __init__(
        self, handle_a: RayServeDeploymentHandle, handle_b: RayServeDeploymentHandle
    ):
        self.handle_a = handle_a
        self.handle_b = handle_b

    async def __call__(self, inp):
        ref: asyncio.Task = await self.handle_b.remote(
            # Serve can handle enqueued-task as dependencies.
            self.handle_a.remote(inp)
        )
        return await ref


app = Chain.bind(Model.bind(), Model.bind())
# __end_async_handle_chain__


if __name__ == "__main__":
    handle: RayServeSyncHandle = serve.run(app)
    ref: ray.ObjectRef = handle.remote("Serve")
    assert ray.get(ref) == "hello hello Serve"
    print(ray.get(ref))
