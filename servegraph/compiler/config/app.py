"""How a compiled graph is served as one Ray Serve application: its name, route prefix and import path.

Emitters read these through :func:`resolve`, which fills what the user did not
say with the defaults ``serve build`` uses, so a config written by
``servegraph build`` reads like one written by ``serve build``.
"""

from __future__ import annotations

import dataclasses
import os
import sys
from typing import TYPE_CHECKING

from ...dsl.nodes import DAGNode
from ...errors import ConfigError

if TYPE_CHECKING:
    from ..compiled import CompiledGraph

#: The name of an application nobody named: Ray Serve's (``SERVE_DEFAULT_APP_NAME``), the one place it is
#: written. ``serve.run``, ``servegraph run``, a config's application without a name, and ``servegraph
#: build`` of one graph all use it, so building and deploying what ``servegraph run`` started updates
#: that application instead of clashing with it on its route.
DEFAULT_APP_NAME = "default"

#: The application builder configs name as ``import_path``, with the graph's own import path in
#: ``args.graph``: Ray Serve (``serve run``/``serve deploy``, KubeRay) calls it to get a Ray Serve
#: application; ``servegraph deploy`` reads ``args.graph`` and runs the graph on servegraph's runtime.
RAY_SERVE_BUILDER = "servegraph.backends.rayserve:build_app"


@dataclasses.dataclass(frozen=True, slots=True)
class AppInfo:
    """What the user said about the application; None where they said nothing."""

    name: str | None = None
    route_prefix: str | None = None
    import_path: str | None = None


@dataclasses.dataclass(frozen=True, slots=True)
class ResolvedApp:
    """An application's name, route prefix and import path with defaults filled in."""

    name: str
    route_prefix: str
    import_path: str | None

    def require_import_path(self) -> str:
        if self.import_path is None:
            raise ConfigError(
                f"application {self.name!r}: its import path is unknown (the graph is not a module-level "
                "variable of an importable module), and a Ray Serve config needs one; pass it with "
                "compiled.with_app(import_path='module:attr') or build from the command line: "
                "servegraph build module:attr"
            )
        return self.import_path


def resolve(compiled: CompiledGraph) -> ResolvedApp:
    """The application's settings: the user's, else the ingress's ``route_prefix`` option, else serve build's.

    >>> from servegraph.compiler.config.app import AppInfo
    >>> AppInfo(name="hello").route_prefix is None
    True
    """
    info = compiled.app
    route_prefix = info.route_prefix
    if route_prefix is None and compiled.ir is not None and compiled.ingress is not None:
        route_prefix = compiled.ir.deployment(compiled.ingress).options.route_prefix
    return ResolvedApp(
        name=info.name or DEFAULT_APP_NAME,
        route_prefix=route_prefix or "/",
        import_path=info.import_path,
    )


def default_apps(count: int) -> list[tuple[str, str]]:
    """(name, route prefix) for ``count`` applications: one is the default application at ``/``; several
    are named ``app1``, ``app2``, ... at ``/app1``, ``/app2``, ... as ``serve build`` names them.

    >>> default_apps(1)
    [('default', '/')]
    >>> default_apps(2)
    [('app1', '/app1'), ('app2', '/app2')]
    """
    if count == 1:
        return [(DEFAULT_APP_NAME, "/")]
    return [(f"app{i + 1}", f"/app{i + 1}") for i in range(count)]


def find_import_path(root: DAGNode) -> str | None:
    """``module:attr`` of the module-level variable that holds ``root``, if there is exactly one place.

    Looks only in modules whose file is the one the root was bound in, so it is
    cheap and never guesses across modules. ``__main__`` is skipped: it cannot
    be imported by name from another process.
    """
    filename = os.path.basename(root._call_site.file)
    found: list[str] = []
    for module_name, module in list(sys.modules.items()):
        path = getattr(module, "__file__", None)
        if module_name == "__main__" or not path or os.path.basename(path) != filename:
            continue
        attrs = sorted(attr for attr, value in list(vars(module).items()) if value is root)
        found.extend(f"{module_name}:{attr}" for attr in attrs[:1])
    return found[0] if len(found) == 1 else None
