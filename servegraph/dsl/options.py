"""Deployment options, validated with pydantic at ``@deployment`` / ``.options()`` time.

Names, types and meanings follow Ray Serve's ``@serve.deployment`` so code and
configs written for Ray Serve read the same here.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from .._validation import did_you_mean, format_errors, route_prefix_problem
from ..errors import OptionError, OptionValueError
from .callsite import CallSite, diagnostic

#: CPUs a replica reserves when the user does not say: small, so a graph of a
#: dozen deployments fits on a 2-core laptop. The user's value always wins.
DEFAULT_REPLICA_CPUS = 0.1

RAY_ACTOR_OPTION_KEYS = (
    "accelerator_type",
    "memory",
    "num_cpus",
    "num_gpus",
    "object_store_memory",
    "resources",
    "runtime_env",
)


#: Ray's placement group strategies (``ray.util.placement_group``); a replica's group is PACK unless told.
PLACEMENT_GROUP_STRATEGIES = ("PACK", "SPREAD", "STRICT_PACK", "STRICT_SPREAD")
DEFAULT_PLACEMENT_GROUP_STRATEGY = "PACK"


class RayActorOptions(BaseModel):
    """The subset of Ray actor options a replica may set (as in Ray Serve)."""

    model_config = ConfigDict(extra="forbid", frozen=True, defer_build=True)

    num_cpus: float | None = Field(default=None, ge=0)
    num_gpus: float | None = Field(default=None, ge=0)
    memory: float | None = Field(default=None, ge=0)
    object_store_memory: float | None = Field(default=None, ge=0)
    resources: dict[str, float] | None = None
    accelerator_type: str | None = None
    runtime_env: dict[str, Any] | None = None

    @field_validator("resources")
    @classmethod
    def _non_negative(cls, value: dict[str, float] | None) -> dict[str, float] | None:
        for key, amount in (value or {}).items():
            if amount < 0:
                raise ValueError(f"resources[{key!r}] must be >= 0")
        return value


class AutoscalingConfig(BaseModel):
    """Ray Serve's autoscaling_config; replicas start at ``initial_replicas`` or ``min_replicas``."""

    model_config = ConfigDict(extra="forbid", frozen=True, defer_build=True)

    min_replicas: int = Field(default=1, ge=0)
    initial_replicas: int | None = Field(default=None, ge=0)
    max_replicas: int = Field(default=1, ge=1)
    target_ongoing_requests: float = Field(default=2.0, gt=0)
    metrics_interval_s: float = Field(default=10.0, gt=0)
    look_back_period_s: float = Field(default=30.0, gt=0)
    smoothing_factor: float = Field(default=1.0, gt=0)
    #: Ray Serve's multipliers for each scaling step; None means smoothing_factor.
    upscaling_factor: float | None = Field(default=None, gt=0)
    downscaling_factor: float | None = Field(default=None, gt=0)
    upscale_delay_s: float = Field(default=30.0, ge=0)
    downscale_delay_s: float = Field(default=600.0, ge=0)

    @model_validator(mode="after")
    def _ordered(self) -> AutoscalingConfig:
        if self.min_replicas > self.max_replicas:
            raise ValueError(
                f"min_replicas ({self.min_replicas}) must be <= max_replicas ({self.max_replicas})"
            )
        if self.initial_replicas is not None and not (
            self.min_replicas <= self.initial_replicas <= self.max_replicas
        ):
            raise ValueError("initial_replicas must lie between min_replicas and max_replicas")
        return self

    def start_replicas(self) -> int:
        if self.initial_replicas is not None:
            return self.initial_replicas
        return max(self.min_replicas, 1)


#: Python's own LogRecord attributes (``logging.LogRecord``), the ones ``additional_log_standard_attrs`` may name.
LOGRECORD_STANDARD_ATTRS = frozenset(
    {
        "args", "asctime", "created", "exc_info", "exc_text", "filename", "funcName", "levelname", "levelno",
        "lineno", "message", "module", "msecs", "msg", "name", "pathname", "process", "processName",
        "relativeCreated", "stack_info", "thread", "threadName", "taskName",
    }
)  # fmt: skip

#: Log levels by name, as the ``logging`` module knows them.
LOG_LEVELS = {"CRITICAL": 50, "FATAL": 50, "ERROR": 40, "WARN": 30, "WARNING": 30, "INFO": 20, "DEBUG": 10, "NOTSET": 0}


class LoggingConfig(BaseModel):
    """Ray Serve's ``LoggingConfig``: how a deployment's replicas write their logs.

    ``encoding`` TEXT or JSON (one object per line); ``log_level`` of the ``ray.serve`` logger (a name, or
    a number, which becomes its name); ``logs_dir`` instead of the Ray session's ``logs/serve``;
    ``enable_access_log`` one line per request; ``additional_log_standard_attrs`` LogRecord attributes
    (``funcName``, ``thread``...) added to every line.

    >>> LoggingConfig(log_level=10).log_level
    'DEBUG'
    """

    model_config = ConfigDict(extra="forbid", frozen=True, defer_build=True)

    encoding: Literal["TEXT", "JSON"] = "TEXT"
    log_level: int | str = "INFO"
    logs_dir: str | None = None
    enable_access_log: bool = True
    additional_log_standard_attrs: tuple[str, ...] = ()

    @field_validator("log_level")
    @classmethod
    def _level(cls, value: int | str) -> str:
        if isinstance(value, int):
            names = {number: name for name, number in LOG_LEVELS.items() if name not in ("FATAL", "WARN")}
            if value not in names:
                raise ValueError(f"log_level {value} is not a level; use one of {sorted(names)} or a name")
            return names[value]
        if value not in LOG_LEVELS:
            raise ValueError(f"log_level {value!r} is not a level name; use one of {', '.join(LOG_LEVELS)}")
        return value

    @field_validator("additional_log_standard_attrs")
    @classmethod
    def _attrs(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        for attr in value:
            if attr not in LOGRECORD_STANDARD_ATTRS:
                raise ValueError(
                    f"unknown LogRecord attribute {attr!r}" + did_you_mean(attr, sorted(LOGRECORD_STANDARD_ATTRS))
                )
        return tuple(dict.fromkeys(value))  # each once, in the order given

    @property
    def level_number(self) -> int:
        return LOG_LEVELS[str(self.log_level)]


def logging_config_of(value: Any) -> Any:
    """Ray Serve's ways of giving a logging config (a dict, our ``LoggingConfig``, Ray Serve's own, which is
    a pydantic model too) as something ``LoggingConfig`` validates; anything else is left for it to refuse."""
    dump = getattr(value, "model_dump", None)
    if dump is not None and not isinstance(value, LoggingConfig):
        value = {k: v for k, v in dump().items() if k in LoggingConfig.model_fields}
    if isinstance(value, dict) and "encoding" in value:  # Ray Serve's EncodingType is a str Enum
        value = {**value, "encoding": getattr(value["encoding"], "value", value["encoding"])}
    return value


def as_logging_config(value: Any, where: str = "logging_config") -> LoggingConfig:
    """``value`` (a dict, a ``LoggingConfig``, Ray Serve's ``LoggingConfig``) checked, as a ``LoggingConfig``.

    Raises:
        OptionValueError: a field Ray Serve does not have, or a value it would refuse.
    """
    try:
        return LoggingConfig.model_validate(logging_config_of(value))
    except ValidationError as exc:
        lines = format_errors(exc, where, LoggingConfig)
        raise OptionValueError(diagnostic("option-value", "invalid logging_config: " + "; ".join(lines), None)) from None


class DeploymentOptions(BaseModel):
    """Every option ``@serve.deployment`` accepts, with Ray Serve's names and defaults."""

    model_config = ConfigDict(extra="forbid", frozen=True, arbitrary_types_allowed=True, defer_build=True)

    name: str | None = Field(default=None, min_length=1)
    version: str | None = None
    num_replicas: int | None = Field(default=None, ge=1)
    route_prefix: str | None = None
    ray_actor_options: RayActorOptions | None = None
    placement_group_bundles: list[dict[str, float]] | None = None
    placement_group_strategy: str | None = None
    max_replicas_per_node: int | None = Field(default=None, ge=1)
    user_config: Any | None = None
    max_ongoing_requests: int = Field(default=5, ge=1)
    max_queued_requests: int = Field(default=-1, ge=-1)
    autoscaling_config: AutoscalingConfig | None = None
    graceful_shutdown_wait_loop_s: float = Field(default=2.0, ge=0)
    graceful_shutdown_timeout_s: float = Field(default=20.0, ge=0)
    health_check_period_s: float = Field(default=10.0, gt=0)
    health_check_timeout_s: float = Field(default=30.0, gt=0)
    logging_config: LoggingConfig | None = None

    @field_validator("logging_config", mode="before")
    @classmethod
    def _logging(cls, value: Any) -> Any:
        return logging_config_of(value)

    @field_validator("route_prefix")
    @classmethod
    def _slash(cls, value: str | None) -> str | None:
        problem = None if value is None else route_prefix_problem(value)
        if problem is not None:
            raise ValueError(problem)
        return value

    @model_validator(mode="after")
    def _replicas_or_autoscaling(self) -> DeploymentOptions:
        if self.num_replicas is not None and self.autoscaling_config is not None:
            raise ValueError("set num_replicas or autoscaling_config, not both")
        return self

    # -- derived values the compiler and runtime read -------------------------
    def replicas(self) -> int:
        """How many replicas to start."""
        if self.autoscaling_config is not None:
            return self.autoscaling_config.start_replicas()
        return self.num_replicas if self.num_replicas is not None else 1

    def actor_options(self) -> dict[str, Any]:
        """Ray actor options with the default CPU reservation filled in."""
        opts = self.ray_actor_options.model_dump(exclude_none=True) if self.ray_actor_options else {}
        opts.setdefault("num_cpus", DEFAULT_REPLICA_CPUS)
        return opts

    def replica_resources(self) -> dict[str, float]:
        """What one replica reserves: its placement group's bundles when it has one (the replica actor runs
        inside bundle 0), else its actor options (see :func:`replica_resources`)."""
        if self.placement_group_bundles is not None:
            return bundles_resources(self.placement_group_bundles)
        return replica_resources(self.actor_options())

    def placement_group(self) -> tuple[list[dict[str, float]], str] | None:
        """The bundles and strategy of each replica's own placement group (PACK unless set); None without one."""
        if self.placement_group_bundles is None:
            return None
        return self.placement_group_bundles, self.placement_group_strategy or DEFAULT_PLACEMENT_GROUP_STRATEGY


def replica_resources(actor_options: Mapping[str, Any]) -> dict[str, float]:
    """CPU, GPU and custom resources one replica reserves, from its Ray actor options.

    The one place resources are read from options: the compiler's resource check, the controller's
    accounting and its placement test all use it (with :func:`add_resources`).

    >>> replica_resources({"num_cpus": 0.5, "resources": {"TPU": 1}})
    {'CPU': 0.5, 'GPU': 0.0, 'TPU': 1.0}
    """
    out = {"CPU": float(actor_options.get("num_cpus") or 0), "GPU": float(actor_options.get("num_gpus") or 0)}
    for name, amount in (actor_options.get("resources") or {}).items():
        out[name] = float(amount)
    return out


def bundles_resources(bundles: Sequence[Mapping[str, float]]) -> dict[str, float]:
    """What a placement group of ``bundles`` reserves: every bundle, summed (CPU and GPU always present).

    >>> bundles_resources([{"CPU": 1, "GPU": 1}, {"CPU": 2}])
    {'CPU': 3.0, 'GPU': 1.0}
    """
    out = {"CPU": 0.0, "GPU": 0.0}
    for bundle in bundles:
        for name, amount in bundle.items():
            out[name] = out.get(name, 0.0) + float(amount)
    return out


#: Ray Serve's words before each way a replica's resources can fail to fit in bundle 0 (ReplicaConfig).
_FIRST_BUNDLE = (
    "When using `placement_group_bundles`, the replica actor will be placed in the first bundle, so the "
    "resource requirements for the actor must be a subset of the first bundle."
)


def placement_group_problem(options: DeploymentOptions) -> tuple[str, str] | None:
    """Why Ray Serve refuses these options' placement group, in its words, and how to fix it; None if it takes it.

    The checks of Ray Serve's ``ReplicaConfig`` (and Ray's ``validate_placement_group``), in their order: a
    strategy needs bundles and must be one of Ray's; bundles are non-empty and ask for something; the replica
    actor is scheduled in bundle 0, so what its ``ray_actor_options`` reserve (with servegraph's default
    CPU) must fit there; and a replica in a group cannot also be limited per node. The one copy of the rule:
    ``@serve.deployment``, ``.options()`` and a deploy config's overrides all pass through
    :func:`make_options`, which asks it.

    >>> summary, hint = placement_group_problem(DeploymentOptions(placement_group_bundles=[{"CPU": 1}],
    ...     ray_actor_options={"num_cpus": 2}))
    >>> summary  # doctest: +ELLIPSIS
    'When using `placement_group_bundles`, ... `num_cpus` for the actor is 2, but the bundle only has 1 `CPU` specified.'
    """
    bundles, strategy = options.placement_group_bundles, options.placement_group_strategy
    if strategy is not None and strategy not in PLACEMENT_GROUP_STRATEGIES:
        return (
            f"Invalid placement group strategy {strategy}. Supported strategies are: {list(PLACEMENT_GROUP_STRATEGIES)}.",
            f"Use one of {', '.join(PLACEMENT_GROUP_STRATEGIES)} ({DEFAULT_PLACEMENT_GROUP_STRATEGY} when left out).",
        )
    if bundles is None:
        if strategy is not None:
            return (
                "If `placement_group_strategy` is provided, `placement_group_bundles` must also be provided.",
                "Give each replica's group its bundles (placement_group_bundles=[{'CPU': 1}, ...]), or drop the strategy.",
            )
        return None
    shape = "Give a list of resource dictionaries, e.g. placement_group_bundles=[{'CPU': 1}, {'GPU': 1}]."
    if not bundles:
        return (
            "Bundles must be a non-empty list of resource dictionaries. For example: "
            '`[{"CPU": 1.0}, {"GPU": 1.0}]`. Got empty list instead.',
            shape,
        )
    for bundle in bundles:
        if not bundle or all(amount == 0 for amount in bundle.values()):
            return f"Bundles cannot be an empty dictionary or resources with only 0 values. Bundles: {bundles}.", shape
        negative = sorted(name for name, amount in bundle.items() if amount < 0)
        if negative:
            return f"Bundles cannot ask for a negative amount of a resource ({negative[0]}). Bundles: {bundles}.", shape
    actor = options.actor_options()
    first = bundles[0]
    asked = [
        ("`num_cpus` for the actor", "CPU", "num_cpus", actor.get("num_cpus")),
        ("`num_gpus` for the actor", "GPU", "num_gpus", actor.get("num_gpus")),
        ("`memory` for the actor", "memory", "memory", actor.get("memory")),
    ]
    asked += [
        (f"`{name}` requirement for the actor", name, f"resources[{name!r}]", amount)
        for name, amount in sorted((actor.get("resources") or {}).items())
    ]
    for what, resource, option, amount in asked:
        need, have = float(amount or 0), float(first.get(resource, 0))
        if need > have + 1e-9:
            return (
                f"{_FIRST_BUNDLE} {what} is {need:g}, but the bundle only has {have:g} `{resource}` specified.",
                f"Add {resource} to the first bundle, or lower ray_actor_options {option} to fit in it"
                + (" (replicas reserve 0.1 CPU unless told: num_cpus=0 asks for none)." if resource == "CPU" else "."),
            )
    if options.max_replicas_per_node is not None:
        return (
            "Setting max_replicas_per_node is not allowed when placement_group_bundles is provided.",
            "Drop max_replicas_per_node, or spread each replica's bundles with placement_group_strategy "
            "(STRICT_SPREAD puts each bundle on its own node).",
        )
    return None


def add_resources(total: dict[str, float], per_replica: Mapping[str, float], replicas: int) -> dict[str, float]:
    """``total`` with ``replicas`` times ``per_replica`` added (in place; returned for chaining).

    >>> add_resources({"CPU": 1.0}, {"CPU": 0.5, "GPU": 1.0}, 2)
    {'CPU': 2.0, 'GPU': 2.0}
    """
    for name, amount in per_replica.items():
        total[name] = total.get(name, 0.0) + replicas * amount
    return total


OPTION_NAMES = tuple(DeploymentOptions.model_fields)

# Ray Serve's older name for max_ongoing_requests, still accepted.
_ALIASES = {"max_concurrent_queries": "max_ongoing_requests"}


def make_options(
    base: DeploymentOptions | None = None, *, _call_site: CallSite | None = None, **overrides: Any
) -> DeploymentOptions:
    """Validate ``overrides`` on top of ``base``.

    ``_call_site`` is where the user set them (``@serve.deployment(...)`` or
    ``.options(...)``); error messages start with it.

    Raises:
        OptionError: an option name that does not exist (names the closest one).
        OptionValueError: a value outside the option's accepted range.
    """
    for old, new in _ALIASES.items():
        if old in overrides:
            overrides[new] = overrides.pop(old)
    for key in overrides:
        if key not in DeploymentOptions.model_fields:
            raise OptionError(
                diagnostic(
                    "unknown-option",
                    f"unknown deployment option {key!r}" + did_you_mean(key, OPTION_NAMES),
                    _call_site,
                    subject=key,
                    hint=f"Valid options: {', '.join(OPTION_NAMES)}.",
                )
            )
    rao = overrides.get("ray_actor_options")
    if isinstance(rao, dict):
        for key in rao:
            if key not in RAY_ACTOR_OPTION_KEYS:
                raise OptionValueError(
                    diagnostic(
                        "option-value",
                        f"ray_actor_options: unknown key {key!r}" + did_you_mean(key, RAY_ACTOR_OPTION_KEYS),
                        _call_site,
                        subject="ray_actor_options",
                        hint=f"Accepted keys: {', '.join(RAY_ACTOR_OPTION_KEYS)}.",
                    )
                )
    data = base.model_dump(exclude_unset=True) if base is not None else {}
    data.update(overrides)
    try:
        options = DeploymentOptions(**data)
    except ValidationError as exc:
        lines = format_errors(exc, "", OPTION_NAMES)
        raise OptionValueError(
            diagnostic("option-value", "invalid deployment option: " + "; ".join(lines), _call_site)
        ) from None
    problem = placement_group_problem(options)
    if problem is not None:
        summary, hint = problem
        raise OptionValueError(
            diagnostic("option-value", summary, _call_site, subject="placement_group_bundles", hint=hint)
        )
    return options
