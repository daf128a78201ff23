"""The controller's checkpoint in Ray's internal KV: what a restarted controller recovers from.

Written after every change of desired state or of a replica's life, read once when a controller
starts, deleted by ``serve.shutdown()``. Its presence also says that applications run: a process that
finds no controller starts one only if a checkpoint is there (see :mod:`.locate`).
"""

from __future__ import annotations

from .. import ray_compat
from ..common.records import NAMESPACE

#: Where the controller's checkpoint lives in Ray's internal KV.
CHECKPOINT_KEY = b"servegraph/controller/checkpoint"


def save(data: bytes) -> None:
    ray_compat.kv_put(CHECKPOINT_KEY, data, NAMESPACE)


def load() -> bytes | None:
    return ray_compat.kv_get(CHECKPOINT_KEY, NAMESPACE)


def delete() -> None:
    ray_compat.kv_del(CHECKPOINT_KEY, NAMESPACE)
