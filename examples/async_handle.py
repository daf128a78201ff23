"""A dynamic dispatcher: constructor handles are RayServeDeploymentHandles, awaited twice.

Run it:  python async_handle.py   -> hello
"""

# __begin_async_handle__
import asyncio
import random

import ray

import servegraph as serve
from servegraph.handle import RayServeDeploymentHandle, RayServeSyncHandle


@serve.deployment
class Model:
    def __call__(self) -> str:
        return "hello"


@serve.deployment
class DynamicDispatcher:
    def __init__(
        self, handle_a: RayServeDeploymentHandle, handle_b: RayServeDeploymentHandle
    ):
        self.handle_a = handle_a
        self.handle_b = handle_b

    async def __call__(self):
        handle_chosen = self.handle_a if random.random() < 0.5 else self.handle_b

        # The request is enqueued.
        submission_task: asyncio.Task = handle_chosen.remote()
        # The request is assigned to a replica.
        ref: ray.ObjectRef = await submission_task
        # The request has been processed by the replica.
        result = await ref

        return result


app = DynamicDispatcher.bind(Model.bind(), Model.bind())
# __end_async_handle__


if __name__ == "__main__":
    handle: RayServeSyncHandle = serve.run(app)
    ref: ray.ObjectRef = handle.remote()
    assert ray.get(ref) == "hello"
    print(ray.get(ref))
