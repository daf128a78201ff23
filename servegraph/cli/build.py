"""``servegraph build``: compile graphs into a deploy config, a KubeRay RayService, or JSON IR."""

from __future__ import annotations

import click

from ..compiler import compile
from ..compiler.config.app import default_apps
from ..compiler.config.loading import validate_config
from ..compiler.emit.deploy_config import application_config, config_yaml, deploy_config, dump_yaml
from ..compiler.emit.json_ir import to_json
from ..compiler.emit.kubernetes import rayservice_yaml
from .common import user_errors
from .load import load_target


@click.command("build")
@click.argument("targets", nargs=-1, required=True, metavar="MODULE:ATTR|FILE.sg...")
@click.option("-o", "--output", default=None, type=click.Path(dir_okay=False), help="Write to this file (default: stdout).")
@click.option(
    "--format",
    "fmt",
    type=click.Choice(["yaml", "kubernetes", "json"]),
    default="yaml",
    show_default=True,
    help="yaml: a Ray Serve deploy config; kubernetes: a KubeRay RayService around it; json: the compiled IR.",
)
@click.option(
    "--name",
    "names",
    multiple=True,
    help="Application name; repeat once per target, in order (default: 'default' for one target, as serve.run and `servegraph run` name it; app1, app2, ... for several, as `serve build`).",
)
@click.option(
    "--route-prefix",
    "route_prefixes",
    multiple=True,
    help="Route prefix; repeat once per target (default: the ingress's route_prefix option, else / for one "
    "target and /NAME for several).",
)
@click.option(
    "--host",
    default=None,
    help="http_options.host: where the proxies listen (default: 127.0.0.1; 0.0.0.0 for --format kubernetes, "
    "where the pod must accept traffic from its Service).",
)
@click.option("--port", default=8000, show_default=True, type=click.IntRange(1, 65535), help="http_options.port.")
@click.option("--image", default=None, help="kubernetes: the image with your code (default: rayproject/ray:RAY_VERSION).")
def build_cmd(
    targets: tuple[str, ...],
    output: str | None,
    fmt: str,
    names: tuple[str, ...],
    route_prefixes: tuple[str, ...],
    host: str | None,
    port: int,
    image: str | None,
) -> None:
    """Compile the graphs (MODULE:ATTR, or .sg files) into a deploy config, each graph one application.

    The config is validated before it is written. It runs on servegraph
    (`servegraph deploy FILE`) and on Ray Serve (`serve run FILE`, `serve
    deploy FILE`, KubeRay with --format kubernetes); options edited in it
    override those in the code.
    """
    if len(names) > len(targets) or len(route_prefixes) > len(targets):
        raise click.UsageError("give --name and --route-prefix at most once per target")
    if fmt == "json" and len(targets) != 1:
        raise click.UsageError("--format json writes one graph; give one target")
    if host is None:
        host = "0.0.0.0" if fmt == "kubernetes" else "127.0.0.1"
    with user_errors():
        graphs = []
        defaults = default_apps(len(targets))
        for i, target in enumerate(targets):
            # A .sg graph's import path is FILE.sg:GRAPH: `servegraph deploy` loads it back.
            loaded = load_target(target)
            import_path = loaded.import_path
            compiled = compile(loaded.node)
            name = names[i] if i < len(names) else defaults[i][0]
            prefix = route_prefixes[i] if i < len(route_prefixes) else loaded.route_prefix
            if prefix is None and len(targets) > 1:
                # serve build's /app1, /app2, ... follow the names, so a renamed app keeps a matching prefix.
                ingress = compiled.ir.deployment(compiled.ingress) if compiled.ingress else None
                prefix = (ingress.options.route_prefix if ingress else None) or f"/{name}"
            graphs.append(compiled.with_app(name=name, route_prefix=prefix, import_path=import_path))

        if fmt == "json":
            text = to_json(graphs[0])
        else:
            config = deploy_config([application_config(g) for g in graphs], host=host, port=port)
            validated = validate_config(config, source="the generated config")
            if fmt == "yaml":
                text = config_yaml(config, targets)
            else:
                text = rayservice_yaml(validated, dump_yaml(config), list(targets), image=image)

    if output is None:
        click.echo(text, nl=False)
        return
    try:
        with open(output, "w", encoding="utf-8") as f:
            f.write(text)
    except OSError as exc:
        raise click.ClickException(f"cannot write {output}: {exc.strerror}") from None
    deployments = sum(len(g.ir.deployments) for g in graphs)
    click.echo(f"wrote {output}: {len(graphs)} application(s), {deployments} deployment(s)", err=True)
