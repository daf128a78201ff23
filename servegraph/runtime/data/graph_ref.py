"""The result of a request that ran on a compiled lane: already there, and read like a Ray ref.

Ray's compiled graphs return a compiled-graph ref, which ``ray.get`` reads (one
ref, or a list of them). A lane's caller has its answer when ``.remote()``
returns (see lanes.py), so :class:`GraphRef` only carries it: ``ray.get(ref)``,
``ray.get([refs])``, ``await ref`` and passing it to another handle all work,
without the object-store round trip a ``ray.put`` would cost (which measured
longer than the whole compiled graph here). The seed's handles
(``RayServeSyncHandle``, ``RayServeDeploymentHandle``) promise an ObjectRef, so
they get :meth:`GraphRef.to_object_ref`; ``DeploymentHandle`` and the HTTP proxy
read the GraphRef directly.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import ray

from .. import ray_compat

if TYPE_CHECKING:
    _RefBase = object
else:
    # Ray's compiled-graph ref, so that ray.get reads a GraphRef (see ray_compat.compiled_ref_base).
    _RefBase = ray_compat.compiled_ref_base()


class GraphRef(_RefBase):
    """A finished request's output (or the error it raised)."""

    def __init__(self, value: Any = None, error: BaseException | None = None):  # no super(): no compiled DAG here
        self._value = value
        self._error = error

    def get(self, timeout: float | None = None) -> Any:
        """What ``ray.get`` calls: the output, or the request's error raised as Ray raises it."""
        if self._error is not None:
            raise self._error
        return self._value

    result = get  # DeploymentResponse.result() reads non-ObjectRef refs this way

    def to_object_ref(self) -> Any:
        """A real ObjectRef of the output (or of the error, which ``ray.get`` then raises), for the seed's handles."""
        return ray.put(self._error if self._error is not None else self._value)

    def __await__(self) -> Any:
        async def value() -> Any:
            return self.get()

        return value().__await__()

    def __reduce__(self) -> tuple:
        return (GraphRef, (self._value, self._error))

    def __copy__(self) -> GraphRef:
        return self

    def __deepcopy__(self, memo: dict) -> GraphRef:
        return GraphRef(self._value, self._error)

    def __del__(self) -> None:  # Ray's ref would release a compiled graph's buffer: there is none
        pass

    def __str__(self) -> str:
        return f"GraphRef({'error' if self._error is not None else type(self._value).__name__})"

    __repr__ = __str__
