"""The HTTP proxies: where they run, starting and replacing them, and the routes they serve (the controller's side).

``proxy_location`` says where, with Ray Serve's values:

- ``HeadOnly``: one proxy, on the head node (named ``servegraph_proxy``);
- ``EveryNode`` (the default, as in Ray Serve): that one, plus one on every other node
  that runs replicas (named ``servegraph_proxy::<node id>``), each listening on the same
  host and port (SO_REUSEPORT, see proxy.py). Each proxy owns the compiled lanes of its
  own node, so HTTP traffic keeps the compiled path on multi-node clusters while lanes
  never cross a node (lane_table.py says why).

Every proxy serves the same options: ``http_options``, and ``grpc_options`` when they name servicer
functions (then each also serves gRPC, see grpc_proxy.py).

A proxy that dies is replaced while its node is alive and still wanted; a proxy on a
node that no longer runs replicas is stopped once it has been idle for
:data:`IDLE_STOP_S`. The head proxy is never stopped while HTTP is on.
"""

from __future__ import annotations

import asyncio
import dataclasses
import sys
import time
from collections.abc import Callable
from typing import Any

import ray
from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

from ..common.records import NAMESPACE, PROXY_NAME

HEAD_ONLY, EVERY_NODE = "HeadOnly", "EveryNode"
PROXY_LOCATIONS = (HEAD_ONLY, EVERY_NODE)
#: Seconds a worker node's proxy stays after its node stopped running replicas.
IDLE_STOP_S = 30.0
#: Seconds a proxy has to start listening.
START_TIMEOUT_S = 60.0
#: Seconds before a failed proxy start on a node is tried again.
RETRY_S = 2.0


def proxy_actor_name(node_id: str, head: bool) -> str:
    return PROXY_NAME if head else f"{PROXY_NAME}::{node_id}"


@dataclasses.dataclass(eq=False)
class ProxyEntry:
    node_id: str
    #: None until started (and again after a failed start, until ``retry_at``).
    actor: Any = None
    #: Done when the proxy died.
    watch: asyncio.Future | None = None
    #: The start in progress, if any.
    starting: asyncio.Task | None = None
    retry_at: float = 0.0
    #: Since when the proxy's node runs no replica (EveryNode).
    unwanted_since: float | None = None


class ProxyManager:
    """The controller's proxies. ``actor_class`` is the Ray actor class of proxy.HTTPProxy."""

    def __init__(
        self,
        actor_class: Any,
        kill: Callable[[list[Any]], None],
        on_change: Callable[[], None],
        code_paths: Callable[[], list[str]] = list,
        locate: Callable[[], Any] | None = None,
    ):
        """``code_paths`` gives the deploying drivers' import directories (where gRPC servicer functions are);
        ``locate`` is handed to each proxy's membership client (see control/locate.py)."""
        self._locate = locate
        self._actor_class = actor_class
        self._kill = kill
        self._on_change = on_change
        self._code_paths = code_paths
        self.http: tuple[str, int] | None = None
        self.options: dict[str, Any] = {}
        #: grpc_options (see grpc_options.py); empty: the proxies serve no gRPC.
        self.grpc: dict[str, Any] = {}
        self.location = EVERY_NODE
        #: By node id; the head's entry is the one clients of a single-node cluster reach.
        self.proxies: dict[str, ProxyEntry] = {}
        self.head_node: str = ray.get_runtime_context().get_node_id()
        #: What set_routes sends every proxy (the latest routes and import paths).
        self._routes: tuple[dict[str, tuple], list[str]] = ({}, [])
        #: The proxies' logging_config (``serve.start(logging_config=)``, a config's top level); None: defaults.
        self.logging_config: Any = None

    @property
    def head(self) -> ProxyEntry | None:
        return self.proxies.get(self.head_node)

    # Starting -------------------------------------------------------------------------------
    async def ensure_head(
        self,
        host: str,
        port: int,
        options: dict[str, Any],
        location: str | None,
        others: list[str],
        grpc: dict[str, Any] | None = None,
    ) -> str | None:
        """Start the head proxy on host:port, or check the running one is there; why not, if it cannot be.

        Proxies already serving other applications elsewhere are not moved: that would cut them off.
        """
        head = self.head
        if head is not None and head.starting is not None:  # the loop is replacing it: let that finish first
            await asyncio.wait([head.starting])
            head = self.head
        if head is not None and head.actor is not None and head.starting is None:
            alive = await answered(head.actor.ready.remote(), timeout=5)
            grpc = {} if grpc is None else grpc
            if alive and self.http == (host, port) and self.options == options and self.grpc == grpc:
                if location is not None:
                    self.location = location
                return None
            if alive and others:
                assert self.http is not None
                h, p = self.http
                grpc_said = f" and grpc_options {self.grpc}" if self.grpc or grpc else ""
                return (
                    f"the HTTP proxy already serves {', '.join(map(repr, others))} on {h}:{p} with http_options "
                    f"{self.options or '{}'}{grpc_said}; deploy with that host, port and those options, or delete those "
                    "applications first (servegraph shutdown)"
                )
            self.stop_all()
            await asyncio.sleep(0.2)  # let the old servers release the port
        self.http, self.options, self.grpc = (host, port), dict(options), dict(grpc or {})
        if location is not None:
            self.location = location
        entry = self._begin(self.head_node)
        error = await self._start(entry)
        if error and self.proxies.get(self.head_node) is entry:
            del self.proxies[self.head_node]
        return error

    def _begin(self, node_id: str) -> ProxyEntry:
        entry = ProxyEntry(node_id)
        self.proxies[node_id] = entry
        return entry

    async def _start(self, entry: ProxyEntry) -> str | None:
        """Start the proxy of ``entry.node_id`` and give it the current routes; an error message if it cannot serve."""
        assert self.http is not None
        head = entry.node_id == self.head_node
        placement: dict[str, Any] = (
            {"resources": {"node:__internal_head__": 0.001}}
            if head
            else {"scheduling_strategy": NodeAffinitySchedulingStrategy(entry.node_id, soft=False)}
        )
        try:
            entry.actor = self._actor_class.options(
                name=proxy_actor_name(entry.node_id, head),
                namespace=NAMESPACE,
                lifetime="detached",
                num_cpus=0,
                max_concurrency=10_000,
                **placement,
            ).remote(*self.http, self.options, self.grpc, locate=self._locate)
            error = await asyncio.wait_for(entry.actor.start.remote(list(self._code_paths())), START_TIMEOUT_S)
            if not error:
                await entry.actor.set_routes.remote(*self._routes)
            if not error and self.logging_config is not None:
                error = await entry.actor.configure_logging.remote(self.logging_config)
        except Exception as exc:  # its node went, a proxy of that name is still being killed, or it was too slow
            error = f"the HTTP proxy on node {entry.node_id[:8]} did not start: {type(exc).__name__}: {exc}"[:300]
        if error:
            if entry.actor is not None:
                self._kill([entry.actor])
            entry.actor = None
            return error
        entry.watch = asyncio.ensure_future(answered(entry.actor.watch.remote()))
        self._on_change()
        return None

    async def set_logging_config(self, logging_config: Any) -> str | None:
        """Every proxy's logging_config, now and for proxies started later; the first error, if any."""
        self.logging_config = logging_config
        calls = [e.actor.configure_logging.remote(logging_config) for e in self.proxies.values() if e.actor is not None]
        errors = [error for error in await asyncio.gather(*calls, return_exceptions=True) if isinstance(error, str)]
        return errors[0] if errors else None

    async def _start_in_background(self, entry: ProxyEntry) -> None:
        error = await self._start(entry)
        entry.starting = None
        if error:
            print(f"servegraph: {error}; retrying", file=sys.stderr)
            entry.retry_at = time.monotonic() + RETRY_S

    def recover(
        self, http: tuple[str, int] | None, options: dict[str, Any], location: str, grpc: dict[str, Any] | None = None
    ) -> None:
        """A restarted controller re-attaches to the proxies that still run (the loop starts missing ones)."""
        self.http = (http[0], http[1]) if http else None
        self.options, self.location, self.grpc = dict(options), location, dict(grpc or {})
        if self.http is None:
            return
        for actor in ray.util.list_named_actors(all_namespaces=True):
            name = actor["name"]
            if actor["namespace"] != NAMESPACE or not (name == PROXY_NAME or name.startswith(PROXY_NAME + "::")):
                continue
            try:
                handle = ray.get_actor(name, namespace=NAMESPACE)
            except ValueError:
                continue
            entry = self._begin(self.head_node if name == PROXY_NAME else name.split("::", 1)[1])
            entry.actor = handle
            entry.watch = asyncio.ensure_future(answered(handle.watch.remote()))

    # The loop's step --------------------------------------------------------------------------
    def reconcile(self, replica_nodes: set[str]) -> None:
        """Replace dead proxies, start one on every node that runs replicas (EveryNode), stop idle ones."""
        if self.http is None:
            return
        now = time.monotonic()
        wanted = {self.head_node} | (replica_nodes if self.location == EVERY_NODE else set())
        for node_id, entry in list(self.proxies.items()):
            if entry.watch is not None and entry.watch.done():  # it died (its node may have gone with it)
                del self.proxies[node_id]
                print(f"servegraph: the HTTP proxy on node {node_id[:8]} died", file=sys.stderr)
                self._on_change()
        for node_id in wanted:
            entry = self.proxies.get(node_id) or self._begin(node_id)
            entry.unwanted_since = None
            if entry.actor is None and entry.starting is None and now >= entry.retry_at:
                entry.starting = asyncio.ensure_future(self._start_in_background(entry))
        for node_id, entry in list(self.proxies.items()):
            if node_id in wanted or entry.starting is not None:
                continue
            if entry.unwanted_since is None:
                entry.unwanted_since = now
            elif entry.actor is None or now - entry.unwanted_since >= IDLE_STOP_S:
                del self.proxies[node_id]
                self._stop(entry)
                self._on_change()

    # Routes and status ------------------------------------------------------------------------
    async def set_routes(self, routes: dict[str, tuple], code_paths: list[str]) -> None:
        """Give every proxy the routes (one still starting too); a proxy that starts later gets them as it starts."""
        self._routes = (routes, list(code_paths))
        calls = [e.actor.set_routes.remote(routes, code_paths) for e in self.proxies.values() if e.actor is not None]
        for call in calls:
            try:
                await call
            except ray.exceptions.RayError:
                pass  # it died (or never started): the loop replaces it, and the new one gets the routes at its start

    def states(self) -> dict[str, str]:
        """Ray Serve's proxy states by node id: HEALTHY once listening, STARTING before."""
        return {n: ("HEALTHY" if e.watch is not None else "STARTING") for n, e in sorted(self.proxies.items())}

    def serving(self) -> bool:
        """Whether HTTP is on and the head proxy listens."""
        head = self.head
        return self.http is not None and head is not None and head.watch is not None

    def _stop(self, entry: ProxyEntry) -> None:
        for task in (entry.starting, entry.watch):
            if task is not None:
                task.cancel()
        if entry.actor is not None:
            self._kill([entry.actor])

    def stop_all(self) -> None:
        for entry in self.proxies.values():
            self._stop(entry)
        self.proxies.clear()

    def forget(self) -> None:
        """Shut down: no proxies, and none wanted."""
        self.stop_all()
        self.http = None


async def answered(ref: Any, timeout: float | None = None) -> bool:
    """Whether an actor call answered (without raising) within ``timeout`` seconds (None: however long it takes)."""
    try:
        await asyncio.wait_for(asyncio.ensure_future(ref), timeout)
        return True
    except Exception:
        return False
