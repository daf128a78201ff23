"""The deploy config's schema: pydantic models mirroring Ray Serve's ``ServeDeploySchema``.

Every field keeps Ray Serve's name, type and meaning (``ServeDeploySchema`` ->
:class:`ServeConfig`, ``ServeApplicationSchema`` -> :class:`ApplicationConfig`,
``DeploymentSchema`` -> :class:`DeploymentConfig`), so a config written for
``serve deploy`` reads the same here. Two deliberate differences:

* Unknown fields are errors (with the closest valid name), where Ray Serve
  ignores some for forward compatibility: a misspelt option must not be
  silently dropped.
* Fields servegraph cannot honour (gang scheduling, request routers, ...) are
  left out, so they are reported as unknown rather than accepted and ignored.
  ``args`` is accepted for one application builder only, servegraph's own
  (:data:`~servegraph.compiler.config.app.RAY_SERVE_BUILDER`), which both engines run.

Reading and validating files is :mod:`.loading`; how a config's deployment
options override the code's is :mod:`.overrides`.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, PrivateAttr, field_validator, model_validator

from ..._validation import route_prefix_problem
from ...dsl.options import AutoscalingConfig, LoggingConfig, RayActorOptions
from ...errors import ConfigError
from .app import DEFAULT_APP_NAME, RAY_SERVE_BUILDER

if TYPE_CHECKING:
    pass

#: Ray Serve's default for a deployment with ``num_replicas: auto`` (``AutoscalingConfig.default()``).
AUTO_AUTOSCALING_CONFIG = {"min_replicas": 1, "max_replicas": 100, "target_ongoing_requests": 2.0}


class _Schema(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class HTTPOptions(_Schema):
    """Ray Serve's ``HTTPOptionsSchema``: where the HTTP proxies listen."""

    # Ray Serve defaults to 0.0.0.0; servegraph serves loopback unless told otherwise.
    host: str = "127.0.0.1"
    port: int = Field(default=8000, ge=1, le=65535)
    root_path: str = ""
    request_timeout_s: float | None = Field(default=None, gt=0)
    keep_alive_timeout_s: int = Field(default=90, ge=0)
    ssl_keyfile: str | None = None
    ssl_certfile: str | None = None
    ssl_keyfile_password: str | None = None
    ssl_ca_certs: str | None = None

    @model_validator(mode="after")
    def _ssl_pair(self) -> HTTPOptions:
        if (self.ssl_keyfile is None) != (self.ssl_certfile is None):
            raise ValueError("set both ssl_keyfile and ssl_certfile to serve HTTPS, or neither")
        return self


class GRPCOptions(_Schema):
    """Ray Serve's ``gRPCOptionsSchema``."""

    port: int = Field(default=9000, ge=1, le=65535)
    grpc_servicer_functions: list[str] = Field(default_factory=list)
    request_timeout_s: float | None = Field(default=None, gt=0)
    enable_reflection: bool = True


#: Fields Ray Serve types as non-nullable: left out, the code's value stays; an explicit null is an error.
_NOT_NULL = (
    "max_ongoing_requests",
    "max_queued_requests",
    "graceful_shutdown_wait_loop_s",
    "graceful_shutdown_timeout_s",
    "health_check_period_s",
    "health_check_timeout_s",
    "ray_actor_options",
    "placement_group_bundles",
    "placement_group_strategy",
    "max_replicas_per_node",
    "logging_config",
)


class DeploymentConfig(_Schema):
    """Ray Serve's ``DeploymentSchema``: options overriding one deployment's, by name.

    None means "not in the file"; only fields in ``model_fields_set`` override the code.
    """

    name: str = Field(min_length=1)
    num_replicas: int | Literal["auto"] | None = None
    max_ongoing_requests: int | None = Field(default=None, gt=0)
    max_queued_requests: int | None = Field(default=None, strict=True)
    user_config: dict[str, Any] | None = None
    autoscaling_config: AutoscalingConfig | None = None
    graceful_shutdown_wait_loop_s: float | None = Field(default=None, ge=0)
    graceful_shutdown_timeout_s: float | None = Field(default=None, ge=0)
    health_check_period_s: float | None = Field(default=None, gt=0)
    health_check_timeout_s: float | None = Field(default=None, gt=0)
    ray_actor_options: RayActorOptions | None = None
    placement_group_bundles: list[dict[str, float]] | None = Field(default=None, min_length=1)
    placement_group_strategy: Literal["PACK", "SPREAD", "STRICT_PACK", "STRICT_SPREAD"] | None = None
    max_replicas_per_node: int | None = Field(default=None, ge=1, le=100)
    logging_config: LoggingConfig | None = None

    @field_validator(*_NOT_NULL, mode="before")
    @classmethod
    def _not_null(cls, value: Any) -> Any:
        if value is None:
            raise ValueError("must not be null (leave the field out to keep the code's value)")
        return value

    @field_validator("num_replicas", mode="before")
    @classmethod
    def _replicas(cls, value: Any) -> Any:
        if value is None or value == "auto":
            return value
        if isinstance(value, bool) or not isinstance(value, int):
            raise ValueError("must be an integer >= 1 or 'auto'")
        if value < 1:
            raise ValueError("must be >= 1")
        return value

    @field_validator("max_queued_requests")
    @classmethod
    def _queue(cls, value: int | None) -> int | None:
        if value is not None and value < 1 and value != -1:
            raise ValueError("must be -1 (no limit) or >= 1")
        return value

    @model_validator(mode="after")
    def _consistent(self) -> DeploymentConfig:
        if isinstance(self.num_replicas, int) and self.autoscaling_config is not None:
            raise ValueError(
                "set num_replicas or autoscaling_config, not both "
                "(num_replicas: auto with an autoscaling_config tunes Ray Serve's default autoscaling)"
            )
        if self.max_replicas_per_node is not None and self.placement_group_bundles is not None:
            raise ValueError("Setting max_replicas_per_node is not allowed when placement_group_bundles is provided.")
        return self


class BuilderArgs(_Schema):
    """The ``args`` of servegraph's application builder: which graph to build, and how.

    The builder (:data:`~servegraph.compiler.config.app.RAY_SERVE_BUILDER`) and
    ``servegraph deploy`` both read ``args`` through this model.
    """

    #: The graph's own import path: ``module:attr`` or ``FILE.sg:GRAPH``.
    graph: str = Field(min_length=1)
    #: Check replicas' resources against the cluster's free ones before deploying. Off by
    #: default under Ray Serve, whose clusters (KubeRay's autoscaler) grow to fit.
    resource_check: bool = False

    @field_validator("graph")
    @classmethod
    def _graph(cls, value: str) -> str:
        if value.endswith(".sg"):
            return value
        module, sep, attr = value.partition(":")
        if not sep or not module or not attr:
            raise ValueError("must be MODULE:ATTR or FILE.sg[:GRAPH], e.g. hello:language_classifier")
        return value


class ApplicationConfig(_Schema):
    """Ray Serve's ``ServeApplicationSchema``: one application of a multi-application config."""

    name: str = Field(default=DEFAULT_APP_NAME, min_length=1)
    route_prefix: str | None = "/"
    import_path: str
    args: BuilderArgs | None = None
    runtime_env: dict[str, Any] = Field(default_factory=dict)
    deployments: list[DeploymentConfig] = Field(default_factory=list)
    logging_config: LoggingConfig | None = None
    #: servegraph's own: false keeps an eligible InputNode graph off the compiled path (Ray Serve has no
    #: such field and refuses unknown ones, so ``servegraph build`` never writes it).
    compiled: bool = True
    #: servegraph's own: false sizes each autoscaled deployment on its own queue only, as Ray Serve does
    #: (true: from its callers' load too, see runtime/graph_autoscaling.py).
    graph_autoscaling: bool = True

    # Where the application is in its file, for messages: set by validate_config.
    _source: str = PrivateAttr(default="<config>")
    _path: str = PrivateAttr(default="applications[0]")

    @field_validator("route_prefix")
    @classmethod
    def _route_prefix(cls, value: str | None) -> str | None:
        # Ray Serve's rules (schema._route_prefix_format).
        problem = None if value is None else route_prefix_problem(value)
        if problem is not None:
            raise ValueError(problem)
        return value

    @field_validator("import_path")
    @classmethod
    def _import_path(cls, value: str) -> str:
        module, sep, attr = value.partition(":")
        if not sep:
            module, _, attr = value.rpartition(".")
        if not module or not attr or ":" in attr:
            raise ValueError("must be MODULE:ATTR (or MODULE.ATTR), e.g. hello:app")
        return value

    @model_validator(mode="after")
    def _builder_args(self) -> ApplicationConfig:
        if self.import_path == RAY_SERVE_BUILDER and self.args is None:
            raise ValueError(f"import_path {RAY_SERVE_BUILDER} needs args.graph: the graph's MODULE:ATTR")
        if self.import_path != RAY_SERVE_BUILDER and self.args is not None:
            raise ValueError(
                f"args go to an application builder; servegraph runs only its own ({RAY_SERVE_BUILDER}), "
                f"not {self.import_path}: set import_path to it and args.graph to your graph"
            )
        return self

    @property
    def graph(self) -> str:
        """The graph's import path (``module:attr`` or ``FILE.sg:GRAPH``), under the builder or not."""
        if self.args is not None:
            return self.args.graph
        if ":" in self.import_path:
            return self.import_path
        return ":".join(self.import_path.rsplit(".", 1))

    @model_validator(mode="after")
    def _unique_deployments(self) -> ApplicationConfig:
        seen: dict[str, int] = {}
        for i, dep in enumerate(self.deployments):
            if dep.name in seen:
                raise ValueError(
                    f"deployment {dep.name!r} is listed twice (deployments[{seen[dep.name]}] and deployments[{i}])"
                )
            seen[dep.name] = i
        return self

    @property
    def location(self) -> str:
        """``file: applications[i]``, for messages."""
        return f"{self._source}: {self._path}"


class ServeConfig(_Schema):
    """Ray Serve's ``ServeDeploySchema``: a multi-application deploy config."""

    proxy_location: Literal["Disabled", "HeadOnly", "EveryNode"] = "EveryNode"
    http_options: HTTPOptions = Field(default_factory=HTTPOptions)
    grpc_options: GRPCOptions = Field(default_factory=GRPCOptions)
    logging_config: LoggingConfig | None = None
    target_capacity: float | None = Field(default=None, ge=0, le=100)
    applications: list[ApplicationConfig]

    @field_validator("applications")
    @classmethod
    def _unique_apps(cls, apps: list[ApplicationConfig]) -> list[ApplicationConfig]:
        for attr, what in (("name", "name"), ("route_prefix", "route_prefix")):
            seen: dict[Any, int] = {}
            for i, app in enumerate(apps):
                value = getattr(app, attr)
                if value is None:
                    continue
                if value in seen:
                    raise ValueError(
                        f"applications[{seen[value]}] and applications[{i}] have the same {what} {value!r}; "
                        f"each application needs its own {what}"
                    )
                seen[value] = i
        return apps

    def application(self, name: str) -> ApplicationConfig:
        for app in self.applications:
            if app.name == name:
                return app
        raise ConfigError(
            f"the config has no application {name!r}; it has: {', '.join(a.name for a in self.applications)}"
        )
