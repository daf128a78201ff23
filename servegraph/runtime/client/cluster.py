"""Connecting to Ray: an existing cluster when there is one, else a local one started for the user."""

from __future__ import annotations

import atexit
import logging
import os
from typing import Any

import ray

from .. import ray_compat
from ..common.records import NAMESPACE
from .cluster_record import BY_SERVE_RUN, forget_record, write_record


def ensure_connected() -> None:
    """``ray.init()`` unless the process is already connected.

    ``RAY_ADDRESS`` (or a prior ``ray.init(address=...)``) picks an existing
    cluster; otherwise Ray starts a local one sized to this machine, recorded for the CLI.
    """
    if ray.is_initialized():
        return
    kwargs: dict[str, Any] = {"namespace": NAMESPACE, "logging_level": logging.WARNING}
    if not os.environ.get("RAY_ADDRESS"):
        # A cluster of its own, as documented: not whatever Ray's ray_current_cluster file names (a `ray start`
        # of any project on this machine, or one long gone, which ray.init would wait on forever).
        kwargs.update(address="local", include_dashboard=False)
    ray.init(**kwargs)
    if ray_compat.started_cluster():
        # A cluster this process started (not one Ray found): the CLI's other commands find it here while it
        # runs, with what they need to reach it; it ends with this process, as Ray's own local clusters do.
        address = ray.get_runtime_context().gcs_address
        write_record(address, BY_SERVE_RUN, session_dir=ray_compat.session_dir(), token_path=ray_compat.token_path_in_use())
        atexit.register(forget_record, address)


def cluster_resources() -> dict[str, float]:
    return {k: float(v) for k, v in ray.cluster_resources().items()}


def cluster_nodes() -> tuple[dict[str, float], ...]:
    """Each alive node's total resources (what a placement group's bundles are placed on)."""
    return tuple({k: float(v) for k, v in node["Resources"].items()} for node in ray.nodes() if node.get("Alive"))
