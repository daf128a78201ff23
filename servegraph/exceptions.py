"""Ray Serve's exception names (``from ray.serve.exceptions import BackPressureError``), for ported code.

``RayServeException`` is servegraph's root error, so ``except RayServeException`` catches what
servegraph raises, as it catches what Ray Serve raises.
"""

from .errors import BackPressureError, DeploymentError
from .errors import GraphError as RayServeException

__all__ = ["BackPressureError", "DeploymentError", "RayServeException"]
