"""@serve.batch: concurrent requests to one replica reach the model as one list.

Run it:  python batching.py   -> the results, and the batch sizes the model saw
"""

import asyncio

import servegraph as serve


@serve.deployment(max_ongoing_requests=16)
class BatchedModel:
    def __init__(self):
        self.batch_sizes = []

    @serve.batch(max_batch_size=8, batch_wait_timeout_s=0.05)
    async def __call__(self, inputs: list) -> list:
        self.batch_sizes.append(len(inputs))
        return [x * 2 for x in inputs]

    def seen_batch_sizes(self) -> list:
        return self.batch_sizes


@serve.deployment
class Client:
    def __init__(self, model):
        self.model = model

    async def __call__(self, n: int) -> list:
        refs = await asyncio.gather(*[self.model.remote(i) for i in range(n)])
        return list(await asyncio.gather(*refs))


model = BatchedModel.bind()
app = Client.bind(model)


if __name__ == "__main__":
    import ray

    handle = serve.run(app)
    print(ray.get(handle.remote(16)))
    print(serve.get_deployment_handle("BatchedModel").seen_batch_sizes.remote().result())
