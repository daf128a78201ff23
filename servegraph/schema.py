"""Ray Serve's config models under Ray Serve's names (``from ray.serve.schema import ServeDeploySchema``).

The same pydantic models servegraph validates deploy configs with (``servegraph/compiler/config/schema.py``):
``ServeDeploySchema.model_validate(yaml.safe_load(text))`` checks a config as ``servegraph deploy`` does.
"""

from .compiler.config.schema import (
    ApplicationConfig as ServeApplicationSchema,
)
from .compiler.config.schema import (
    DeploymentConfig as DeploymentSchema,
)
from .compiler.config.schema import (
    GRPCOptions as gRPCOptionsSchema,
)
from .compiler.config.schema import (
    HTTPOptions as HTTPOptionsSchema,
)
from .compiler.config.schema import (
    LoggingConfig,
)
from .compiler.config.schema import (
    ServeConfig as ServeDeploySchema,
)

__all__ = [
    "DeploymentSchema",
    "HTTPOptionsSchema",
    "LoggingConfig",
    "ServeApplicationSchema",
    "ServeDeploySchema",
    "gRPCOptionsSchema",
]
