"""The result of ``servegraph.compile()``: a thin view over the IR that every artifact is made from."""

from __future__ import annotations

import dataclasses
import functools
import os
from typing import Any

import networkx as nx

from .._validation import route_prefix_problem
from ..errors import ConfigError, Diagnostic
from . import ir
from .config.app import DEFAULT_APP_NAME, AppInfo, resolve
from .context import to_networkx
from .emit import deploy_config, dot, json_ir, mermaid
from .emit import render as _render
from .ir import DeploymentIR, Plan


@dataclasses.dataclass(frozen=True, eq=False)
class CompiledGraph:
    """A checked graph: its IR, with views of it (networkx graph, deployments by name, plan).

    Attributes:
        ir: the AppIR the runtime executes, the single source every view and artifact is made from.
        diagnostics: warnings (and, with ``strict=False``, errors) the checks found.
        app: the application's name, route prefix and import path, where known
            (see :meth:`with_app`); emitters fill the rest as ``serve build`` does.

    Artifacts are made by the emitter modules in ``emit/`` (``deploy_config``, ``dot``,
    ``mermaid``, ``json_ir``, ``render``); the methods here only call them.
    """

    ir: ir.AppIR
    diagnostics: tuple[Diagnostic, ...] = ()
    app: AppInfo = AppInfo()

    @functools.cached_property
    def graph(self) -> nx.DiGraph:
        """The graph as a networkx DiGraph, derived from the IR: nodes keyed ``n0, n1, ...`` with their
        NodeIR as ``ir``; edges with ``kind`` (data, handle, target) and ``label`` (argument position
        or keyword); the output's key as ``graph.graph["root"]``."""
        return to_networkx(self.ir)

    @property
    def names(self) -> dict[str, str]:
        """Deployment names by node key, as the naming pass gave them."""
        return {d.node: d.name for d in self.ir.deployments}

    @property
    # In the class body the field ``ir`` hides the module, hence the names imported from it.
    def deployments(self) -> dict[str, DeploymentIR]:
        """Deployments by final name, dependencies first."""
        return {d.name: d for d in self.ir.deployments}

    @property
    def plan(self) -> Plan | None:
        return self.ir.plan

    @property
    def ingress(self) -> str | None:
        return self.ir.ingress

    @property
    def ok(self) -> bool:
        return not any(d.severity == "error" for d in self.diagnostics)

    def with_app(
        self, *, name: str | None = None, route_prefix: str | None = None, import_path: str | None = None
    ) -> CompiledGraph:
        """A copy serving as the application ``name`` at ``route_prefix``, imported from ``import_path``.

        Arguments left None keep their current value.

        Raises:
            ConfigError: a route prefix Ray Serve refuses (the rule ``serve.run`` and configs apply).
        """
        problem = None if route_prefix is None else route_prefix_problem(route_prefix)
        if problem is not None:
            raise ConfigError(f"application {name or self.app.name or DEFAULT_APP_NAME!r}: route_prefix {route_prefix!r} {problem}")
        app = AppInfo(
            name=name if name is not None else self.app.name,
            route_prefix=route_prefix if route_prefix is not None else self.app.route_prefix,
            import_path=import_path if import_path is not None else self.app.import_path,
        )
        return dataclasses.replace(self, app=app)

    # -- artifacts ------------------------------------------------------------
    def to_config(self, *, host: str = "127.0.0.1", port: int = 8000) -> dict[str, Any]:
        """A Ray Serve multi-application deploy config (a dict) with this graph as its one application."""
        return deploy_config.deploy_config([deploy_config.application_config(self)], host=host, port=port)

    def to_yaml(self, *, host: str = "127.0.0.1", port: int = 8000) -> str:
        """:meth:`to_config` as YAML, with a header saying where it came from (what ``servegraph build`` writes)."""
        config = self.to_config(host=host, port=port)
        return deploy_config.config_yaml(config, [resolve(self).require_import_path()])

    def to_json(self) -> str:
        """The compiled IR as JSON; :func:`servegraph.compiler.emit.json_ir.load_compiled` reads it back."""
        return json_ir.to_json(self)

    def to_dot(self, rankdir: str = "LR") -> str:
        """The graph's diagram as Graphviz DOT text."""
        return dot.to_dot(self, rankdir)

    def to_mermaid(self, rankdir: str = "LR") -> str:
        """The graph's diagram as a Mermaid flowchart."""
        return mermaid.to_mermaid(self, rankdir)

    def render(self, path: str | os.PathLike[str], rankdir: str = "LR") -> str:
        """Write the diagram to ``path`` (.dot, .mmd, or .svg/.png/.pdf with Graphviz); returns the path."""
        return _render.render(self, path, rankdir)

    def _repr_mimebundle_(self, include: Any = None, exclude: Any = None) -> dict[str, str]:
        """Jupyter: the diagram as SVG with Graphviz, else as Mermaid (JupyterLab draws it), else text."""
        bundle = {"text/plain": repr(self)}
        if not self.ok:
            return bundle
        try:
            bundle["image/svg+xml"] = _render.to_svg(self)
        except Exception:  # no Graphviz: a notebook must still show something
            bundle["text/markdown"] = f"```mermaid\n{self.to_mermaid()}```"
        return bundle

    def __repr__(self) -> str:
        kind = f"ingress={self.ingress!r}" if self.ingress else f"plan of {len(self.plan.steps) if self.plan else 0} steps"
        errors = sum(d.severity == "error" for d in self.diagnostics)
        return f"<CompiledGraph deployments={list(self.deployments)} {kind}" + (f" errors={errors}>" if errors else ">")

    def __getstate__(self) -> Any:  # pragma: no cover - compiled graphs stay in the driver
        raise TypeError("a CompiledGraph is not sent to replicas; send its .ir")
