"""What a change to a deployment forces: new replicas, a reconfigure, or only a new count.

Ray Serve splits a deployment's version the same way (``_private/version.py``):
code, constructor arguments, actor options and placement group options need new replicas; ``user_config``
is applied to live replicas by ``reconfigure()``; ``num_replicas`` and
``autoscaling_config`` only move the target; the remaining options (queue
bound, health checks, shutdown timings) are read by the controller and routers
and take effect without touching a replica.

The code version comes from the compiler (:mod:`servegraph.compiler.version`).
"""

from __future__ import annotations

import hashlib
from typing import Any

import cloudpickle

from ...compiler import ir


def replica_version(spec: ir.DeploymentIR) -> str:
    """Changes exactly when running replicas cannot serve the new spec and must be replaced.

    Handles in constructor arguments name deployments, not replicas, so a
    change to a deployment this one calls never changes this one's version.
    """
    h = hashlib.sha256(spec.code_version.encode())
    for part in (
        spec.is_function,
        spec.init_args,
        spec.init_kwargs,
        sorted(spec.options.actor_options().items(), key=lambda kv: kv[0]),
        spec.options.max_ongoing_requests,  # the replica actor's max_concurrency
    ):
        h.update(_stable_bytes(part))
    group = spec.options.placement_group()
    if group is not None:  # each replica's own group is made with it (Ray Serve restarts replicas too)
        h.update(_stable_bytes(group))
    return h.hexdigest()[:16]


def _stable_bytes(value: Any) -> bytes:
    # repr is stable across processes for the plain data options hold; arguments may be arbitrary objects.
    try:
        text = repr(value)
        if " at 0x" not in text:
            return text.encode()
    except Exception:  # a user object whose repr raises
        pass
    return cloudpickle.dumps(value)


def changed_settings(before: Any, after: Any) -> tuple[str, ...]:
    """The options of a deployment whose effect differs between two option sets, by name.

    Compares what each option does, not how it was written: ``num_replicas`` unset and
    ``num_replicas: 1`` start the same one replica, and ``ray_actor_options`` unset reserves
    the same default CPU a config spells out. ``before``/``after`` are ``DeploymentOptions``.

    >>> from servegraph.dsl.options import DeploymentOptions
    >>> changed_settings(DeploymentOptions(), DeploymentOptions(num_replicas=1, max_queued_requests=3))
    ('max_queued_requests',)
    """
    effective = {"num_replicas": lambda o: o.replicas(), "ray_actor_options": lambda o: o.actor_options()}
    names = []
    for name in type(after).model_fields:
        read = effective.get(name, lambda o, name=name: getattr(o, name))
        if read(before) != read(after):
            names.append(name)
    return tuple(names)
