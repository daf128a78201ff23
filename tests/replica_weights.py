"""A deployment whose constructor argument fails to unpickle where its replicas run (not in the driver,
nor in the controller): the replica's creation fails before its constructor is asked to run, so the
error reaches the controller as the replica's death, not as the constructor's reply.

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
