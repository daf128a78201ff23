"""A deployment whose constructor argument fails to unpickle where its replicas run (not in the driver,
nor in the controller): the replica loads the user's code before it runs the constructor, so the error
is the replica's failed start, before any user code of the deployment ran.

Only the replicas' processes have ``FAIL_LOAD`` set (the deployment's runtime_env).
"""

import os

import servegraph as serve


class Weights:
    """Model weights that load when unpickled, where the replica runs."""

    def __init__(self, path: str):
        self.path = path

    def __setstate__(self, state: dict) -> None:
        self.__dict__.update(state)
        if os.environ.get("FAIL_LOAD"):
            raise ValueError("bad model file")  # RAISES_HERE


@serve.deployment(ray_actor_options={"runtime_env": {"env_vars": {"FAIL_LOAD": "1"}}})
class WeightsModel:
    def __init__(self, weights: Weights):
        self.weights = weights

    def __call__(self) -> str:
        return self.weights.path
