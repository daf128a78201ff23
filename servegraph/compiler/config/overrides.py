"""A deploy config's deployment options override the code's, field by field, as in Ray Serve.

:func:`deployment_overrides` says which options a config overrides, and
:func:`check_overrides` checks them against a compiled graph before anything is
deployed; the options pass (:mod:`servegraph.compiler.passes.options`) applies them.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from pydantic import BaseModel

from ..._validation import did_you_mean
from ...dsl.options import make_options
from ...errors import ConfigError, OptionError, OptionValueError
from .schema import AUTO_AUTOSCALING_CONFIG, ApplicationConfig, DeploymentConfig

if TYPE_CHECKING:
    from ..compiled import CompiledGraph


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


def split_weights(compiled: CompiledGraph, overrides: dict[str, dict[str, Any]]) -> tuple[dict[str, Any], dict[str, dict[str, Any]]]:
    """The split weights a config gives (its plan driver entry's ``user_config.splits``), and the other overrides.

    ``servegraph build`` writes a graph's split weights as the ``user_config`` of a ``DAGDriver`` entry, the
    deployment that runs the plan on Ray Serve; servegraph runs the plan in its proxies and handles, so
    from that entry it reads the weights and nothing else.

    Raises:
        ConfigError: the entry sets anything but ``user_config.splits``, or the graph has no split.
    """
    from ..emit.deploy_config import plan_driver_name, splits_entry

    driver = plan_driver_name(compiled.deployments)
    if driver not in overrides:
        return {}, overrides
    where = getattr(overrides, "locations", {}).get(driver, f"deployment {driver!r}")
    entry = dict(overrides[driver])
    rest = Overrides({k: v for k, v in overrides.items() if k != driver}, getattr(overrides, "locations", {}))
    if splits_entry(compiled) is None:
        raise ConfigError(
            f"{where}: {compiled.app.import_path or 'the graph'} has no Split, so there is no {driver} entry to "
            f"configure (servegraph build writes one for a graph with a split, holding its weights); remove it"
        )
    config = entry.pop("user_config", None)
    if entry or not isinstance(config, dict) or set(config) != {"splits"} or not isinstance(config["splits"], dict):
        raise ConfigError(
            f"{where}: {driver} runs the graph's plan; its entry holds only user_config.splits, the split weights "
            f"({{split name: {{branch: percent}}}}), got {({**entry, 'user_config': config})!r}"
        )
    return dict(config["splits"]), rest


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


#: runtime_env fields whose value is a location servegraph must be able to import from where it deploys.
_CODE_FIELDS = ("working_dir", "py_modules")


def merge_runtime_env(app_env: dict[str, Any], deployment_env: dict[str, Any]) -> dict[str, Any]:
    """An application's runtime_env under a deployment's own, as Ray Serve merges them: the deployment's
    fields win, and ``env_vars`` merge key by key (the deployment's win).

    >>> merge_runtime_env({"env_vars": {"A": "1", "B": "1"}, "pip": ["x"]}, {"env_vars": {"B": "2"}})
    {'env_vars': {'A': '1', 'B': '2'}, 'pip': ['x']}
    """
    merged = {**app_env, **deployment_env}
    if "env_vars" in app_env or "env_vars" in deployment_env:
        merged["env_vars"] = {**(app_env.get("env_vars") or {}), **(deployment_env.get("env_vars") or {})}
    return merged


def with_app_runtime_env(compiled: CompiledGraph, overrides: Overrides, runtime_env: dict[str, Any]) -> Overrides:
    """``overrides`` with the application's runtime_env given to every deployment's ray_actor_options.

    Each replica starts in it (Ray installs ``pip``, sets ``env_vars``, ships a local ``working_dir``).
    """
    if not runtime_env:
        return overrides
    out = {name: dict(options) for name, options in overrides.items()}
    for name, dep in compiled.deployments.items():
        options = out.setdefault(name, {})
        actor = dict(options.get("ray_actor_options") or dep.options.actor_options())
        actor["runtime_env"] = merge_runtime_env(runtime_env, dict(actor.get("runtime_env") or {}))
        options["ray_actor_options"] = actor
    return Overrides(out, getattr(overrides, "locations", {}))


def local_code_dirs(runtime_env: dict[str, Any], where: str) -> list[str]:
    """The local directories of an application's runtime_env code fields, to import its graph from.

    Raises:
        ConfigError: a remote location (``s3://``, ``https://...zip``): servegraph imports the graph where
            ``servegraph deploy`` runs, so the code must be on this machine.
    """
    import os

    dirs = []
    for field in _CODE_FIELDS:
        value = runtime_env.get(field)
        for location in (value if isinstance(value, list) else [value] if value else []):
            if not isinstance(location, str) or "://" in location:
                raise ConfigError(
                    f"{where}.runtime_env.{field}: {location!r} is not a local directory; servegraph imports the "
                    "application where `servegraph deploy` runs, so give the directory the code is in here "
                    "(Ray still ships it to every replica)"
                )
            dirs.append(os.path.abspath(location) if field == "working_dir" else os.path.dirname(os.path.abspath(location)))
    return dirs
