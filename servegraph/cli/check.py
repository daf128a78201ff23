"""``servegraph check``: run the compiler's checks and print every diagnostic."""

from __future__ import annotations

import dataclasses
import json
import socket
import sys

import click

from .._handle_era import HandleEra, handle_era
from ..compiler import compile
from ..compiler.fast_path import compiled_path_problem
from ..errors import GraphError
from .connect import _host_port, choose, cluster_options, connect
from .load import load_app


@click.command("check")
@click.argument("target")
@click.option("--graph", "name", default=None, help="Graph to check in a .sg file with several.")
@click.option("--format", "fmt", type=click.Choice(["text", "json"]), default="text", show_default=True)
@click.option(
    "--resources",
    "resources",
    default=None,
    help="Check against these cluster resources, e.g. CPU=2,GPU=0 (default: those of the connected "
    "cluster, if one is reachable; else no resource check).",
)
@click.option("--strict", is_flag=True, help="Treat warnings (e.g. mismatched type annotations) as errors.")
@cluster_options
def check_cmd(
    target: str,
    name: str | None,
    fmt: str,
    resources: str | None,
    strict: bool,
    address: str | None,
    connect_timeout: float,
) -> None:
    """Check the graph TARGET (MODULE:ATTR or a .sg file) without deploying it."""
    cluster, nodes = None, None
    if resources:
        try:
            cluster = {k.strip(): float(v) for k, v in (item.split("=") for item in resources.split(","))}
        except ValueError:
            raise click.BadParameter(
                "expected NAME=AMOUNT[,NAME=AMOUNT...], e.g. CPU=2", param_hint="--resources"
            ) from None
    diagnostics = []
    path = None
    eras: list[tuple[str, HandleEra]] = []
    try:
        app = load_app(target, name=name)
        if cluster is None:
            cluster, note, nodes = measured_resources(address, connect_timeout)
            click.echo(note, err=True)
        compiled = compile(app, cluster_resources=cluster, cluster_nodes=nodes, strict=False)
        diagnostics = list(compiled.diagnostics)
        if not any(d.severity == "error" or strict for d in diagnostics):
            eras = [(d.name, handle_era(d.target)) for d in compiled.ir.deployments if d.handles]
            problem = compiled_path_problem(compiled.ir)
            path = (
                f"requests run as a plan of actor calls: {problem}"
                if problem
                else "requests run on the compiled path (Ray compiled graphs; serve.run(..., compiled=False) turns it off)"
            )
    except GraphError as exc:  # every error carries its diagnostics, located where the user wrote the code
        diagnostics = list(exc.diagnostics)
    if strict:
        diagnostics = [dataclasses.replace(d, severity="error") for d in diagnostics]
    if fmt == "json":
        click.echo(json.dumps([d.to_dict() for d in diagnostics], indent=2))
    else:
        for d in diagnostics:
            click.echo(d.format(), err=d.severity == "error")
        errors = sum(d.severity == "error" for d in diagnostics)
        if not diagnostics:
            click.echo(f"{target}: ok, no problems found")
        else:
            click.echo(f"{target}: {errors} error(s), {len(diagnostics) - errors} warning(s)", err=True)
        if path is not None:  # which way requests will run (only for a graph without errors)
            click.echo(path)
        for deployment, era in eras:
            click.echo(f"{deployment}: its constructor handles are {era.handle_class}s: {era.reason}")
    sys.exit(1 if any(d.severity == "error" for d in diagnostics) else 0)


#: Resources Ray reports that no replica asks for by name (memory is in bytes, nodes are labels).
_NOT_CHECKED = ("memory", "object_store_memory")


def measured_resources(
    address: str | None, timeout: float
) -> tuple[dict[str, float] | None, str, tuple[dict[str, float], ...] | None]:
    """The resources of the cluster a command would use, a line saying which (or why none), and each of its
    nodes' resources (what placement groups are placed on).

    Never starts a cluster: with none named, or none answering, the resource check is skipped.
    """
    skipped = "resource check skipped: "
    hint = "; pass --resources CPU=N[,GPU=M] to check against given resources."
    loaded = sys.modules.get("ray")  # importing Ray takes a second: only once a cluster answers
    started_here = loaded is None or not loaded.is_initialized()
    if started_here:
        chosen = choose(address)
        if chosen is None:
            return None, skipped + "no Ray cluster is named (--address, RAY_ADDRESS, or one `servegraph run` started)" + hint, None
        target = _host_port(chosen.address)
        if target is not None:
            try:
                with socket.create_connection(target, timeout=min(timeout, 2.0)):
                    pass
            except OSError as exc:
                return None, skipped + f"the Ray cluster at {chosen.address} ({chosen.source}) does not answer ({exc})" + hint, None
    try:
        cluster = connect(address, timeout, quiet=True)
    except SystemExit:  # connect() said why on stderr
        return None, skipped + "could not connect to the Ray cluster" + hint, None
    import ray

    from ..runtime.client.cluster import cluster_nodes

    try:
        have = {k: float(v) for k, v in ray.cluster_resources().items() if not k.startswith("node:") and k not in _NOT_CHECKED}
        nodes = cluster_nodes()
    finally:
        if started_here:
            ray.shutdown()
    shown = ", ".join(f"{k}={v:g}" for k, v in sorted(have.items()))
    where = f"{cluster.address} ({cluster.source})" if cluster is not None else "this process's"
    return have, f"resources: checking against the Ray cluster at {where}: {shown} in all (other applications' use not subtracted)", nodes
