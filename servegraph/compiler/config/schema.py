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

A deployment's options in the config override the ones in the code, field by
field, as in Ray Serve: :func:`deployment_overrides` says which, and
:func:`check_overrides` checks them against a compiled graph before anything
is deployed.
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING, Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, PrivateAttr, ValidationError, field_validator, model_validator

from ..._validation import did_you_mean, format_errors, route_prefix_problem
from ...dsl.options import AutoscalingConfig, RayActorOptions, make_options
from ...errors import ConfigError, OptionError, OptionValueError
from .app import DEFAULT_APP_NAME, RAY_SERVE_BUILDER

if TYPE_CHECKING:
    from ..compiled import CompiledGraph

#: Ray Serve's default for a deployment with ``num_replicas: auto`` (``AutoscalingConfig.default()``).
AUTO_AUTOSCALING_CONFIG = {"min_replicas": 1, "max_replicas": 100, "target_ongoing_requests": 2.0}

#: Ray Serve's name for an application the config does not name.


class _Schema(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class LoggingConfig(_Schema):
    """Ray Serve's ``LoggingConfig``."""

    encoding: Literal["TEXT", "JSON"] = "TEXT"
    log_level: int | str = "INFO"
    logs_dir: str | None = None
    enable_access_log: bool = True
    additional_log_standard_attrs: list[str] = Field(default_factory=list)


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
            raise ValueError("set max_replicas_per_node or placement_group_bundles, not both")
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


def validate_config(data: Any, source: str = "<config>") -> ServeConfig:
    """Validate a parsed config (a dict) into a :class:`ServeConfig`.

    Raises:
        ConfigError: one line per problem, each ``SOURCE: path.in.file: what is wrong, got VALUE``.
    """
    if not isinstance(data, dict):
        raise ConfigError(
            f"{source}: expected a mapping with 'applications' at the top level, got {type(data).__name__}"
        )
    try:
        config = ServeConfig.model_validate(data)
    except ValidationError as exc:
        lines = [f"{source}: {line}" for line in format_errors(exc, "", ServeConfig)]
        if "applications" not in data and "import_path" in data:
            lines.append(
                f"{source}: this looks like a single-application config; put it in a list under 'applications:'"
            )
        message = lines[0] if len(lines) == 1 else f"{len(lines)} problems in {source}:\n" + "\n".join(
            "  " + line for line in lines
        )
        raise ConfigError(message) from None
    for i, app in enumerate(config.applications):
        app._source, app._path = source, f"applications[{i}]"
    return config


def load_config(path: str | os.PathLike[str]) -> ServeConfig:
    """Read and validate a deploy config (YAML or JSON), or the ``serveConfigV2`` of a KubeRay RayService.

    Raises:
        ConfigError: the file cannot be read or parsed, or is not a valid config;
            the message lists every problem with the file name and its path in the file.
    """
    source = os.fspath(path)
    try:
        with open(source, encoding="utf-8") as f:
            text = f.read()
    except OSError as exc:
        raise ConfigError(f"{source}: cannot read the config: {exc.strerror}") from None
    data = _parse_yaml(text, source)
    if isinstance(data, dict) and data.get("kind") == "RayService":
        source = f"{source} (spec.serveConfigV2)"
        embedded = (data.get("spec") or {}).get("serveConfigV2")
        if not isinstance(embedded, str):
            raise ConfigError(f"{source}: the RayService has no serveConfigV2 string")
        data = _parse_yaml(embedded, source)
    return validate_config(data, source)


def _parse_yaml(text: str, source: str) -> Any:
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"{source}:{mark.line + 1}:{mark.column + 1}" if mark is not None else source
        problem = getattr(exc, "problem", None) or str(exc)
        raise ConfigError(f"{where}: not valid YAML: {problem}") from None
    if data is None:
        raise ConfigError(f"{source}: the config is empty; expected a mapping with 'applications'")
    return data


class Overrides(dict):
    """Option overrides by deployment name, remembering where each deployment is in the config file."""

    def __init__(self, items: dict[str, dict[str, Any]], locations: dict[str, str]):
        super().__init__(items)
        #: ``file: applications[i].deployments[j]`` by deployment name.
        self.locations = locations


def deployment_overrides(app_config: ApplicationConfig) -> Overrides:
    """The options each listed deployment overrides: ``{deployment name: {option: value}}``.

    Only fields written in the config appear, as plain values that
    ``Deployment.options(**overrides)`` / ``make_options`` accept. As in Ray
    Serve, ``ray_actor_options`` replaces the code's whole dict;
    ``num_replicas: auto`` becomes Ray Serve's default autoscaling_config
    updated with the config's own; setting one of num_replicas and
    autoscaling_config clears the other. The application's ``runtime_env`` is
    not per deployment and is left to the caller.

    >>> app = ApplicationConfig(import_path="hello:app", deployments=[{"name": "A", "num_replicas": 2}])
    >>> deployment_overrides(app)
    {'A': {'num_replicas': 2, 'autoscaling_config': None}}
    """
    out: dict[str, dict[str, Any]] = {}
    locations: dict[str, str] = {}
    for j, dep in enumerate(app_config.deployments):
        options: dict[str, Any] = {}
        for field in DeploymentConfig.model_fields:  # schema order, so the result is stable
            if field == "name" or field not in dep.model_fields_set:
                continue
            value = getattr(dep, field)
            options[field] = value.model_dump(exclude_unset=True) if isinstance(value, BaseModel) else value
        if options.get("num_replicas") == "auto":
            options["num_replicas"] = None
            options["autoscaling_config"] = {**AUTO_AUTOSCALING_CONFIG, **(options.get("autoscaling_config") or {})}
        elif options.get("num_replicas") is not None:
            options.setdefault("autoscaling_config", None)
        elif options.get("autoscaling_config") is not None:
            options.setdefault("num_replicas", None)
        out[dep.name] = options
        locations[dep.name] = f"{app_config.location}.deployments[{j}]"
    return Overrides(out, locations)


def check_overrides(compiled: CompiledGraph, overrides: dict[str, dict[str, Any]]) -> None:
    """Check that every overridden deployment is in the graph and its merged options are valid.

    Raises:
        ConfigError: every problem, each naming the deployment's place in the
            config file (when ``overrides`` came from :func:`deployment_overrides`).
    """
    deployments = compiled.deployments
    locations = getattr(overrides, "locations", {})
    graph = compiled.app.import_path or "the graph"
    problems = []
    for name, options in overrides.items():
        where = locations.get(name, f"deployment {name!r}")
        dep = deployments.get(name)
        if dep is None:
            problems.append(
                f"{where}.name: {graph} has no deployment {name!r}"
                + (did_you_mean(name, deployments) or ";")
                + f" Its deployments: {', '.join(deployments) or '(none)'}."
            )
            continue
        try:
            make_options(dep.options, **dict(options))
        except (OptionError, OptionValueError) as exc:
            problems.append(f"{where}: {exc}")
    if problems:
        raise ConfigError(
            problems[0]
            if len(problems) == 1
            else f"{len(problems)} problems in the config:\n" + "\n".join("  " + p for p in problems)
        )
