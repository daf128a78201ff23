"""The live graph of running applications: the HTTP proxy's ``/-/graph`` pages, and the CLI's snapshots.

Each view is the application's diagram annotated with its statistics (compiler/emit/live.py draws
it). Both come from the controller: the IR's outline (``graph_outline``, no user code in it, so this
works in a process that cannot import the graph's modules) and ``graph_stats``.

The diagram code (and networkx with it) loads only when a view is drawn, so the proxy keeps its small
footprint until someone asks for a page.

* ``/-/graph``: the applications, each a link to its page;
* ``/-/graph/<app>``: the application's live diagram (SVG inline), which a few lines of JavaScript
  replace every :data:`REFRESH_S` seconds with ``/-/graph/<app>.svg``; no asset from elsewhere.
"""

from __future__ import annotations

import asyncio
import dataclasses
import html
import json
import urllib.parse
from collections.abc import Mapping
from typing import Any

import ray

from ...compiler import ir
from ...errors import RenderError
from ..common.http_codec import HTTPResult, not_found, text
from ..data.long_poll import ControllerUnavailable, runtime_client

#: Seconds between two refreshes of an open graph page.
REFRESH_S = 2.0
#: Seconds the page waits for the controller before it says it cannot answer.
CONTROLLER_WAIT_S = 10.0

#: Where the proxy serves these pages.
GRAPH_PAGES = "/-/graph"


@dataclasses.dataclass(frozen=True)
class LiveGraph:
    """One application as it runs now: its IR's outline, its route and its statistics (``graph_stats``'s dict)."""

    name: str
    app: ir.AppIR
    route_prefix: str | None
    stats: Mapping[str, Any]

    def dot(self, rankdir: str = "LR") -> str:
        from ...compiler.emit.live import to_live_dot

        return to_live_dot(self.app, self.stats, name=self.name, route_prefix=self.route_prefix, rankdir=rankdir)

    def svg(self, rankdir: str = "LR") -> str:
        """Drawn by Graphviz's ``dot`` (RenderError if it is missing)."""
        from ...compiler.emit.live import to_live_svg

        return to_live_svg(self.app, self.stats, name=self.name, route_prefix=self.route_prefix, rankdir=rankdir)

    def write(self, path: str, rankdir: str = "LR") -> str:
        """Write the live diagram to ``path``: ``.dot``, or ``.svg``/``.png``/``.pdf`` through Graphviz."""
        from ...compiler.emit.render import write

        return write(path, lambda: self.dot(rankdir))

    def tree(self) -> Any:
        """A ``rich`` renderable for the terminal."""
        from ...compiler.emit.live import live_tree

        return live_tree(self.app, self.stats, name=self.name, route_prefix=self.route_prefix)


# -- the proxy's side -----------------------------------------------------------------
async def _controller() -> Any:
    return await asyncio.to_thread(runtime_client().controller, CONTROLLER_WAIT_S)


async def _ask(call: Any) -> Any:
    return await asyncio.wait_for(asyncio.wrap_future(call.future()), CONTROLLER_WAIT_S)


async def _live(controller: Any, name: str) -> LiveGraph | None:
    """The application's live graph, or None if it does not run (or was deleted meanwhile)."""
    record = await _ask(controller.graph_outline.remote(name))
    if record is None:
        return None
    try:
        stats = await _ask(controller.graph_stats.remote(name))
    except KeyError:  # deleted since its outline was read
        return None
    return LiveGraph(name, record.app, record.route_prefix, stats)


async def _names(controller: Any) -> list[str]:
    return sorted((await _ask(controller.status.remote())).applications)


async def graph_page(path: str) -> HTTPResult:
    """Answer ``/-/graph``, ``/-/graph/<app>`` (HTML) or ``/-/graph/<app>.svg``; 404 for an unknown application."""
    rest = path[len(GRAPH_PAGES) :].strip("/")  # an ASGI path arrives decoded: a%2Fb is a/b already
    try:
        controller = await _controller()
        if not rest:
            return _html(index_html(await _names(controller)))
        name, svg = rest, False
        live = await _live(controller, name)
        if live is None and rest.endswith(".svg"):  # an application's name may end in .svg too: it goes first
            name, svg = rest[: -len(".svg")], True
            live = await _live(controller, name)
        if live is None:
            return not_found(path, "-/graph", "applications", await _names(controller))
    except (asyncio.TimeoutError, ControllerUnavailable, ray.exceptions.RayError) as exc:
        return text(
            503, f"the servegraph controller did not answer ({type(exc).__name__}); it may be restarting, retry"
        )
    try:
        drawing = await asyncio.to_thread(live.svg)  # `dot` runs outside the proxy's event loop
    except RenderError as exc:
        return text(500, str(exc))
    if svg:
        return 200, [("content-type", "image/svg+xml"), ("cache-control", "no-store")], drawing.encode()
    return _html(page_html(name, drawing))


def _html(body: str) -> HTTPResult:
    return 200, [("content-type", "text/html; charset=utf-8"), ("cache-control", "no-store")], body.encode()


def inline_svg(svg: str) -> str:
    """SVG text to put inside HTML: from its ``<svg`` element on (no XML declaration or DOCTYPE).

    >>> inline_svg('<?xml version="1.0"?><!DOCTYPE svg><svg width="1"></svg>')
    '<svg width="1"></svg>'
    """
    at = svg.find("<svg")
    return svg[at:] if at >= 0 else svg


_STYLE = """
body { font-family: Helvetica, Arial, sans-serif; margin: 1.5em; color: #222; }
h1 { font-size: 1.3em; margin: 0 0 0.3em 0; }
.note { color: #666; font-size: 0.9em; }
#graph svg { max-width: 100%; height: auto; }
"""

#: Fetches the application's SVG every REFRESH_S seconds and puts it in place; says when it last did.
_SCRIPT = """
const graph = document.getElementById("graph");
const note = document.getElementById("updated");
let refreshes = 0;
async function refresh() {
  try {
    const response = await fetch(SVG_URL, {cache: "no-store"});
    const body = await response.text();
    if (!response.ok) throw new Error(response.status + ": " + body);
    graph.innerHTML = body.slice(Math.max(0, body.indexOf("<svg")));
    refreshes += 1;
    document.body.dataset.refreshes = String(refreshes);
    note.textContent = "updated " + new Date().toLocaleTimeString();
  } catch (error) {
    note.textContent = "could not refresh: " + error.message;
  }
}
refresh();
setInterval(refresh, REFRESH_MS);
"""


def page_html(name: str, svg: str) -> str:
    """The page of one application: its live diagram now, refreshed in place every :data:`REFRESH_S` seconds."""
    quoted = urllib.parse.quote(name, safe="")
    script = _SCRIPT.replace("SVG_URL", json.dumps(f"{GRAPH_PAGES}/{quoted}.svg")).replace(
        "REFRESH_MS", str(int(REFRESH_S * 1000))
    )
    return (
        '<!doctype html>\n<html><head><meta charset="utf-8">'
        f"<title>{html.escape(name)}: live graph</title><style>{_STYLE}</style></head>\n"
        '<body data-refreshes="0">\n'
        f"<h1>{html.escape(name)}</h1>\n"
        f'<p class="note"><a href="{GRAPH_PAGES}">all applications</a> · refreshed every {REFRESH_S:g} s · '
        '<span id="updated">not refreshed yet</span></p>\n'
        f'<div id="graph">{inline_svg(svg)}</div>\n'
        f"<script>{script}</script>\n</body></html>\n"
    )


def index_html(names: list[str]) -> str:
    """The list of running applications, each a link to its live graph."""
    items = "".join(
        f'<li><a href="{GRAPH_PAGES}/{urllib.parse.quote(n, safe="")}">{html.escape(n)}</a></li>\n' for n in names
    )
    listing = f"<ul>\n{items}</ul>" if names else "<p>No applications are running.</p>"
    return (
        '<!doctype html>\n<html><head><meta charset="utf-8">'
        f"<title>servegraph: live graphs</title><style>{_STYLE}</style></head>\n"
        f"<body>\n<h1>Applications</h1>\n{listing}\n</body></html>\n"
    )


__all__ = [
    "GRAPH_PAGES",
    "REFRESH_S",
    "LiveGraph",
    "graph_page",
    "index_html",
    "inline_svg",
    "page_html",
]
