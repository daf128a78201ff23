"""A handle method call: ``handle.method1.remote()``; plain ``.remote()`` calls ``__call__``.

Run it:  python handle_method.py   -> __call__: hi / Method1: hi
"""

# __begin_handle_method__
import ray

import servegraph as serve
from servegraph.handle import RayServeSyncHandle


@serve.deployment
class Deployment:
    def method1(self, arg: str) -> str:
        return f"Method1: {arg}"

    def __call__(self, arg: str) -> str:
        return f"__call__: {arg}"


app = Deployment.bind()
# __end_handle_method__


if __name__ == "__main__":
    handle: RayServeSyncHandle = serve.run(app)

    print(ray.get(handle.remote("hi")))  # Defaults to calling the __call__ method.
    print(ray.get(handle.method1.remote("hi")))  # Call a different method.
