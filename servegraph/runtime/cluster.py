"""Connecting to Ray: an existing cluster when there is one, else a local one started for the user."""

from __future__ import annotations

import atexit
import logging
import os
from typing import Any

import ray

#: Ray namespace of servegraph's named actors (controller, HTTP proxy).
NAMESPACE = "servegraph"
CONTROLLER_NAME = "servegraph_controller"
PROXY_NAME = "servegraph_proxy"


def ensure_connected() -> None:
    """``ray.init()`` unless the process is already connected.

    ``RAY_ADDRESS`` (or a prior ``ray.init(address=...)``) picks an existing
    cluster; otherwise Ray starts a local one sized to this machine.
    """
    if ray.is_initialized():
        return
    kwargs: dict[str, Any] = {"namespace": NAMESPACE, "logging_level": logging.WARNING}
    if not os.environ.get("RAY_ADDRESS"):
        kwargs["include_dashboard"] = False
    ray.init(**kwargs)
    if not os.environ.get("RAY_ADDRESS"):
        # A cluster this process started: the CLI's other commands find it here while it runs.
        from .cluster_record import forget_record, write_record

        address = ray.get_runtime_context().gcs_address
        write_record(address, "serve.run")
        atexit.register(forget_record, address)


def cluster_resources() -> dict[str, float]:
    return {k: float(v) for k, v in ray.cluster_resources().items()}
