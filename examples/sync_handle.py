"""The sync handle: ``serve.run`` returns a RayServeSyncHandle whose ``.remote()`` is a ray.ObjectRef.

Run it:  python sync_handle.py   -> hello
"""

# __begin_sync_handle__
import ray
from starlette.requests import Request  # noqa: F401  (imported as in Ray Serve's snippet)

import servegraph as serve
from servegraph.handle import RayServeSyncHandle


@serve.deployment
class Model:
    def __call__(self) -> str:
        return "hello"


app = Model.bind()
# __end_sync_handle__


if __name__ == "__main__":
    handle: RayServeSyncHandle = serve.run(app)
    ref: ray.ObjectRef = handle.remote()  # blocks until request is assigned to replica
    assert ray.get(ref) == "hello"
    print(ray.get(ref))
