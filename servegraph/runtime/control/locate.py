"""Finding the controller, starting it, and starting it again when it died for good with applications running.

The data plane never starts a controller by itself: the driver hands :func:`find_or_revive` to its
membership client (``long_poll.set_controller_locator``) when it connects, and to the controller it
starts, which hands it on to every replica and proxy; so a lost controller comes back from whichever
process needs it first. The controller's module imports nothing from here: it is given the function.
"""

from __future__ import annotations

from typing import Any

from ..common.records import CONTROLLER_NAME, NAMESPACE
from ..data.long_poll import find_controller
from . import checkpoint


def start_controller() -> Any:
    """The controller actor, started if none runs (its checkpoint, if any, is recovered)."""
    # Loaded here, not at the top: replicas and proxies import this module for find_or_revive, and only
    # a process that starts a controller needs its code.
    from .controller import ControllerActor

    # Detached and restarted by Ray when it dies (its calls retried); on the head node, which outlives workers.
    return ControllerActor.options(
        name=CONTROLLER_NAME,
        namespace=NAMESPACE,
        lifetime="detached",
        get_if_exists=True,
        num_cpus=0,
        max_concurrency=1000,
        max_restarts=-1,
        max_task_retries=-1,
        resources={"node:__internal_head__": 0.001},
        # Explicit, so a controller revived from inside a replica is never captured into that replica's
        # placement group (replicas with placement_group_bundles capture what they create).
        scheduling_strategy="DEFAULT",
    ).remote(locate=find_or_revive)


def find_or_revive() -> Any:
    """The controller; one started again if it died for good with applications running (their checkpoint
    is there), so it recovers them and re-attaches to their replicas. After ``serve.shutdown()`` there is
    no checkpoint: None."""
    controller = find_controller()
    if controller is None and checkpoint.load():
        return start_controller()
    return controller
