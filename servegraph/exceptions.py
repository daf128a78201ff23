"""Ray Serve's exception names (``from ray.serve.exceptions import BackPressureError``), for ported code.

``RayServeException`` is servegraph's root error, so ``except RayServeException`` catches what
servegraph raises, as it catches what Ray Serve raises.
"""

from typing import Any

from .errors import BackPressureError, DeploymentError, DeploymentUnavailableError
from .errors import GraphError as RayServeException


def __getattr__(name: str) -> Any:
    if name == "RequestCancelledError":  # a Ray exception too: made with the runtime, which imports Ray
        from .runtime.data.responses import RequestCancelledError

        return RequestCancelledError
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = [
    "BackPressureError",
    "DeploymentError",
    "DeploymentUnavailableError",
    "RayServeException",
    "RequestCancelledError",  # noqa: F822  (made on first use)
]
