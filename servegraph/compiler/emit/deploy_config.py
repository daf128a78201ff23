"""Emit a Ray Serve multi-application deploy config (``serve build``'s shape) from compiled graphs.

Each deployment is written with the options it will run with — the code's,
with defaults filled in — so the file says what runs and is the place to
change it. Keys follow the order of Ray Serve's schema; deployments the IR's
order (dependencies first). The same graphs always give the same bytes.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import TYPE_CHECKING, Any

import yaml

from ...dsl.options import RayActorOptions
from ...errors import ConfigError, raise_diagnostics
from .. import ir
from ..config.app import RAY_SERVE_BUILDER, resolve
from . import yaml_fast

if TYPE_CHECKING:
    from ..compiled import CompiledGraph

#: Options written for every deployment, in Ray Serve's DeploymentSchema order.
_ALWAYS = (
    "max_ongoing_requests",
    "max_queued_requests",
)
_TIMINGS = (
    "graceful_shutdown_wait_loop_s",
    "graceful_shutdown_timeout_s",
    "health_check_period_s",
    "health_check_timeout_s",
)
#: Options written only when the code sets them.
_WHEN_SET = ("placement_group_bundles", "placement_group_strategy", "max_replicas_per_node", "logging_config")


#: The ingress deployment that runs an InputNode graph's plan on Ray Serve (Ray Serve's name for it).
PLAN_DRIVER = "DAGDriver"


def plan_driver_name(deployments: Iterable[str]) -> str:
    """The plan driver's name beside these deployments: ``DAGDriver``, or ``_DAGDriver`` if a deployment has it.

    >>> plan_driver_name(["Model"]), plan_driver_name(["DAGDriver"])
    ('DAGDriver', '_DAGDriver')
    """
    taken = set(deployments)
    name = PLAN_DRIVER
    while name in taken:
        name = "_" + name
    return name


def splits_entry(compiled: CompiledGraph) -> dict[str, Any] | None:
    """The ``deployments`` entry that holds a graph's split weights, or None for a graph with no split.

    They are the plan driver's ``user_config`` (``{"splits": {name: {branch: weight}}}``): Ray Serve
    applies a changed ``user_config`` to the live replica, where a changed ``args`` would restart every
    replica of the application (it is part of Ray Serve's code version); servegraph reads them from the
    same place and runs the plan in its proxies and handles, so nothing restarts there either.
    """
    plan = compiled.ir.plan
    weights = plan.split_weights() if plan is not None else {}
    if not weights:
        return None
    names = [dep.name for dep in compiled.ir.deployments]
    return {"name": plan_driver_name(names), "user_config": {"splits": {k: dict(v) for k, v in sorted(weights.items())}}}


def require_ok(compiled: CompiledGraph) -> None:
    """Refuse to emit a graph that has errors (compiled with ``strict=False``)."""
    raise_diagnostics(compiled.diagnostics)


def deployment_config(dep: ir.DeploymentIR) -> dict[str, Any]:
    """One deployment's entry, with its effective options."""
    options = dep.options
    out: dict[str, Any] = {"name": dep.name}
    if options.autoscaling_config is None:
        out["num_replicas"] = options.replicas()
    for key in _ALWAYS:
        out[key] = getattr(options, key)
    if options.user_config is not None:
        out["user_config"] = options.user_config
    if options.autoscaling_config is not None:
        out["autoscaling_config"] = options.autoscaling_config.model_dump(exclude_none=True)
    for key in _TIMINGS:
        out[key] = getattr(options, key)
    out["ray_actor_options"] = actor_options(dep)
    for key in _WHEN_SET:
        value = getattr(options, key)
        if value is not None:
            out[key] = value.model_dump(mode="json") if key == "logging_config" else value
    return out


#: Read once: pydantic's ``model_fields`` costs 20 µs a read, 0.2 s for 10,000 deployments.
_ACTOR_OPTION_ORDER = tuple(RayActorOptions.model_fields)


def actor_options(dep: ir.DeploymentIR) -> dict[str, Any]:
    """The replica's Ray actor options with servegraph's default CPU filled in, in a fixed order."""
    given = dep.actor_options
    out = {key: given[key] for key in _ACTOR_OPTION_ORDER if key in given}
    if "resources" in out:
        out["resources"] = dict(sorted(out["resources"].items()))
    return out


def application_config(compiled: CompiledGraph) -> dict[str, Any]:
    """The graph as one entry of ``applications``.

    ``import_path`` names servegraph's application builder and ``args.graph``
    the graph, so the entry runs on Ray Serve (``serve run``, ``serve deploy``,
    KubeRay) as well as under ``servegraph deploy``.
    """
    require_ok(compiled)
    app = resolve(compiled)
    deployments = [deployment_config(dep) for dep in compiled.ir.deployments]
    splits = splits_entry(compiled)
    if splits is not None:  # the place to shift traffic: edited and deployed again, no replica restarts
        deployments.append(splits)
    return {
        "name": app.name,
        "route_prefix": app.route_prefix,
        "import_path": RAY_SERVE_BUILDER,
        "args": {"graph": app.require_import_path()},
        "runtime_env": {},
        "deployments": deployments,
    }


def deploy_config(applications: Iterable[dict[str, Any]], *, host: str = "127.0.0.1", port: int = 8000) -> dict[str, Any]:
    """The whole multi-application config around the given application entries."""
    return {
        "proxy_location": "EveryNode",
        "http_options": {"host": host, "port": port},
        "applications": list(applications),
    }


CONFIG_NOTE = (
    "A Ray Serve multi-application config: options set here override those in the code.\n"
    "Runs on servegraph (`servegraph deploy FILE`) and on Ray Serve (`serve run FILE`, `serve deploy FILE`);\n"
    "both need servegraph and the graph's modules importable where the application is built."
)


def header(sources: Iterable[str], *notes: str) -> str:
    """Comment lines saying what wrote the file and from which graphs, then ``notes``."""
    lines = [f"Generated by servegraph from {', '.join(sources)}.", *(notes or CONFIG_NOTE.splitlines())]
    return "".join(f"# {line}\n" for line in lines)


class _Dumper(yaml.SafeDumper):
    """Block style, a blank line between top-level keys (as ``serve build``), ``|`` for multi-line strings."""

    def write_line_break(self, data: Any = None) -> None:
        super().write_line_break(data)
        if len(self.indents) == 1 and getattr(self, "blank_lines", True):
            super().write_line_break()


def _str(dumper: yaml.SafeDumper, value: str) -> yaml.ScalarNode:
    style = "|" if "\n" in value else None
    return dumper.represent_scalar("tag:yaml.org,2002:str", value, style=style)


_Dumper.add_representer(str, _str)
_Dumper.add_representer(tuple, lambda dumper, value: dumper.represent_list(list(value)))


class _PlainDumper(_Dumper):
    blank_lines = False


def dump_yaml(data: Any, *, blank_lines: bool = True, fast: bool = True) -> str:
    """YAML for a config: keys in the order given, 2-space indents, no line folding.

    ``fast`` writes plain data through libyaml (:mod:`.yaml_fast`, the same bytes).
    """
    text = yaml_fast.dump(data, blank_lines=blank_lines) if fast else None
    if text is not None:
        return text
    try:
        return yaml.dump(
            data,
            Dumper=_Dumper if blank_lines else _PlainDumper,
            default_flow_style=False,
            sort_keys=False,
            width=1000,
            indent=2,
            allow_unicode=True,
        )
    except yaml.representer.RepresenterError as exc:
        raise ConfigError(
            f"the config holds a value YAML cannot represent ({exc.args[-1]!r}); "
            "user_config and other options must be plain data: dicts, lists, strings, numbers, booleans"
        ) from None


def config_yaml(config: dict[str, Any], sources: Iterable[str]) -> str:
    """The config as YAML text with its header."""
    return header(sources) + "\n" + dump_yaml(config)
