"""The controller: one actor that holds every application's desired state and loops to make it so.

One named, detached actor (``servegraph_controller`` in namespace ``servegraph``) pinned to the head node
and restarted by Ray if it dies. It is the loop and its remote methods only, as Ray Serve's
``_private/controller.py``; each concern is a manager of its own module:

- applications.py: targets, deploy and delete, application status, autoscaling (graph-aware too);
- deployments.py: each deployment's reconcile step (start with backoff, rolling updates, health
  replacement, draining, status); replica_lifecycle.py: one replica's life;
- replicas.py: the one seam through which every Ray call on a replica actor goes;
- lanes.py (over lane_table.py): the compiled path's lanes; proxy_state.py: the HTTP proxies;
- membership.py: the long-poll host routers listen to; checkpoint.py: what survives a restart;
- replies.py: what the remote methods answer.

It is never on a request's path. Routers in every process learn the replica sets by long-poll
(:meth:`Controller.listen`) and report load for the autoscaler (:meth:`Controller.record_metrics`).
Replicas and the HTTP proxy are detached named actors, so they outlive the controller; its state is
checkpointed in Ray's internal KV, and a restarted controller re-attaches to the replicas that are still
alive instead of starting over.
"""

from __future__ import annotations

import asyncio
import os
import pickle
import sys
import time
import traceback
from collections.abc import Callable
from typing import Any

import ray
import ray.cloudpickle

from ...compiler import ir
from ...compiler.outline import outline
from ..actors.proxy import HTTP_OPTION_DEFAULTS
from ..actors.proxy import HTTPProxy as _HTTPProxy
from ..common import telemetry
from ..common.codec import loads_with_paths
from ..data.handle import DeploymentInfo
from ..data.router import Membership
from . import checkpoint
from .applications import DEPLOY_FAILED, ApplicationManager
from .deployments import DeploymentManager
from .lane_table import Owner
from .lanes import LaneManager
from .membership import MembershipHost
from .proxy_state import EVERY_NODE, ProxyManager
from .replica_lifecycle import SERVING, ReplicaLifecycle
from .replicas import ReplicaActors
from .replies import AppRecord, DeployReply, Refusal, StatusReply
from .signals import Signals

#: How long ``deploy`` waits for replicas to start before it reports failure (they keep being tried).
START_TIMEOUT_S = float(os.environ.get("SERVEGRAPH_REPLICA_START_TIMEOUT_S", "300"))
#: The control loop runs this often, and at once when something happens (a death, a deploy, a report).
CONTROL_PERIOD_S = 0.1


class Controller:
    def __init__(self, locate: Callable[[], Any] | None = None) -> None:
        """``locate`` finds the controller, or starts it again from its checkpoint (see control/locate.py):
        handed on to every replica and proxy, for their handles' membership clients."""
        #: Every deploying driver's import directories, for the proxy to load graphs' code.
        self._code_paths: list[str] = []
        self._signals = Signals(crash=self._crash)
        self._host = MembershipHost()
        actors = ReplicaActors(locate)
        self._lifecycle = ReplicaLifecycle(
            actors, self._signals, own_path=list(sys.path), lane_exit=lambda app, replica_id: self._apps.lane_exit(app, replica_id)
        )
        self._lanes = LaneManager(self._host, actors, self._signals)
        self._apps = ApplicationManager(DeploymentManager(self._lifecycle, self._host, self._signals), self._lanes, self._host, self._signals)
        #: The HTTP proxies: where they run and what they serve (see proxy_state.py).
        self._proxies = ProxyManager(HTTPProxy, _kill, self._signals.changed, lambda: self._code_paths, locate)
        self._lock = asyncio.Lock()
        self._recovered = asyncio.Event()
        self._loops = 0
        self._own_actor_id = ray.get_runtime_context().get_actor_id() or ""
        #: The gauges last exported (Ray keeps the last value; only changes are set again).
        self._exported: dict[tuple, float] = {}
        self._loop_task = asyncio.get_event_loop().create_task(self._run())

    # Test hook: stop the controller at a chosen point, deterministically ----------------------
    async def _test_crash_at(self, point: str | None) -> int:
        """End this controller process (Ray restarts it) when it next reaches ``point``; returns its pid.

        Points: ``replica-created`` (a replica exists, its constructor never asked to run),
        ``replica-initializing`` / ``replica-reconfiguring`` / ``replica-draining`` (the replica is in
        that phase), ``rollout`` (old and new versions both running), ``lanes-formed`` (lanes were
        just published to their owners). The checkpoint is written first, as the loop would have.
        """
        self._signals.crash_at = point
        return os.getpid()

    async def _test_pid(self) -> int:
        """This controller's process id (a test sees a restart by it changing)."""
        return os.getpid()

    def _crash(self) -> None:
        self._checkpoint()
        print(f"servegraph: controller stopping at test point {self._signals.crash_at!r}", file=sys.stderr, flush=True)
        os._exit(1)

    # The control loop -------------------------------------------------------------------
    async def _run(self) -> None:
        try:
            await self._recover()
        except Exception:
            traceback.print_exc()
        finally:
            self._recovered.set()
        while True:
            started = time.monotonic()
            try:
                async with self._lock:
                    self._reconcile_all()
                self._export_metrics(time.monotonic() - started)
            except Exception:  # the loop must never stop; the next pass retries
                traceback.print_exc()
            self._signals.kick.clear()
            try:
                await asyncio.wait_for(self._signals.kick.wait(), CONTROL_PERIOD_S)
            except asyncio.TimeoutError:
                pass

    def _reconcile_all(self) -> None:
        self._apps.reconcile(time.monotonic())
        self._proxies.reconcile(self._apps.replica_nodes())
        if self._signals.dirty:
            self._signals.dirty = False
            self._checkpoint()

    def _export_metrics(self, loop_s: float) -> None:
        """The control plane's gauges under Ray Serve's names (set when they change)."""
        if not telemetry.ENABLED:
            return
        self._loops += 1
        telemetry.set_gauge("serve_controller_num_control_loops", {"actor_id": self._own_actor_id}, self._loops)
        telemetry.set_gauge("serve_controller_control_loop_duration_s", {}, loop_s)
        values: dict[tuple, float] = {}
        for app in self._apps.apps.values():
            values[("serve_application_status", app.name)] = telemetry.APPLICATION_STATUS_NUMBERS.get(app.status, 0)
            for dep in app.deployments.values():
                key = (dep.name, app.name)
                healthy = sum(1 for r in dep.replicas.values() if r.state in SERVING and not r.dead and r.unhealthy is None)
                values[("serve_deployment_replica_healthy",) + key] = healthy
                values[("serve_deployment_status",) + key] = telemetry.DEPLOYMENT_STATUS_NUMBERS.get(dep.status, 0)
                if dep.autoscaler is not None:
                    values[("serve_autoscaling_target_replicas",) + key] = dep.target
                    values[("serve_autoscaling_desired_replicas",) + key] = dep.autoscaler.last_desired
                    values[("serve_autoscaling_total_requests",) + key] = dep.autoscaler.total_ongoing(time.time())
        for key, value in values.items():
            if self._exported.get(key) != value:
                name, *tag_values = key
                tag_keys = telemetry.METRICS[name][1]
                telemetry.set_gauge(name, dict(zip(tag_keys, tag_values, strict=True)), value)
        for key in set(self._exported) - set(values):  # deleted: Ray keeps a gauge's last value, so zero it
            name, *tag_values = key
            telemetry.set_gauge(name, dict(zip(telemetry.METRICS[name][1], tag_values, strict=True)), 0)
        self._exported = values

    # Membership: the long-poll host --------------------------------------------------------
    async def listen(self, snapshot: dict[tuple[str, str], Any]) -> dict[tuple[str, str], tuple[tuple[int, int], Membership]]:
        """Return the memberships in ``snapshot`` whose version differs, waiting up to LISTEN_TIMEOUT_S for one."""
        await self._recovered.wait()
        return await self._host.listen(snapshot, self._apps.current)

    async def record_models(self, app: str, deployment: str, replica_id: str, model_ids: tuple[str, ...]) -> None:
        """A replica's multiplexed models changed: routers learn it with the replica set (see multiplex.py)."""
        dep = self._apps.deployment(app, deployment)
        replica = dep.replicas.get(replica_id) if dep is not None else None
        if dep is not None and replica is not None and replica.models != frozenset(model_ids):
            replica.models = frozenset(model_ids)
            self._apps.deployments.publish(dep)

    async def record_stats(self, deployments: dict, edges: dict) -> None:
        """A replica's request counts, errors and latency buckets since its last report (see telemetry.py)."""
        now = time.time()
        self._apps.deployment_stats.add(now, deployments)
        self._apps.edge_stats.add(now, edges)

    async def graph_stats(self, app: str, window_s: float = 10.0) -> dict[str, Any]:
        """What the live graph shows: per deployment requests/s, errors, p50/p99 over the last ``window_s``
        seconds and replicas running/target; per edge (caller -> deployment.method) calls/s, errors, p50.

        Raises:
            KeyError: no application ``app``.
        """
        state = self._apps.apps.get(app)
        if state is None:
            raise KeyError(app)
        return self._apps.graph_stats(state, window_s)

    async def record_metrics(self, client_id: str, loads: dict[tuple[str, str], int]) -> None:
        """A router's queued plus in-flight requests per deployment (for the autoscaler)."""
        now = time.time()
        for (app, name), load in loads.items():
            dep = self._apps.deployment(app, name)
            if dep is not None and dep.autoscaler is not None:
                dep.autoscaler.record(client_id, now, float(load))
                if dep.target == 0 and load > 0:
                    self._signals.wake()

    # Compiled lanes (see lanes.py) ----------------------------------------------------------
    async def claim_lanes(
        self, app: str, owner_id: str, job_id: str, actor_id: str | None = None, node_id: str | None = None
    ) -> str:
        """A process on ``node_id`` that runs ``app``'s requests wants compiled lanes (of that node's replicas);
        returns why it will get none, or ""."""
        await self._recovered.wait()
        state = self._apps.apps.get(app)
        if state is None:
            return "no such application"
        return self._lanes.claim(state, Owner(owner_id, job_id, actor_id, node_id))

    async def release_lanes(self, app: str, owner_id: str) -> None:
        """An owner leaves (its process exits): its lanes go to others."""
        state = self._apps.apps.get(app)
        if state is not None:
            self._lanes.release(state, owner_id)

    async def lane_broken(self, app: str, lane_id: int, reason: str) -> None:
        """An owner's lane failed with its replicas alive: re-form it, unless lanes keep breaking."""
        state = self._apps.apps.get(app)
        if state is not None:
            self._lanes.broken(state, lane_id, reason)

    async def lane_retired(self, app: str, lane_id: int, replica_ids: tuple[str, ...]) -> None:
        """An owner tore down a lane that was dissolved: its replicas are released now, not after a grace period."""
        state = self._apps.apps.get(app)
        if state is not None:
            self._lanes.retired(state, lane_id, tuple(replica_ids))

    async def lane_failed(self, app: str, lane_id: int, reason: str) -> None:
        """An owner could not compile a lane: the application stays on the plan path, and status says why."""
        state = self._apps.apps.get(app)
        if state is not None:
            self._lanes.failed(state, lane_id, reason)

    # Deploying --------------------------------------------------------------------------
    async def deploy_app(
        self,
        name: str,
        app_bytes: bytes,
        route_prefix: str | None,
        http: tuple[str | None, int | None, dict[str, Any] | None] | None,
        code_paths: tuple[str, ...] = (),
        compiled: bool = True,
        proxy_location: str | None = None,
        wait: bool = True,
        grpc_options: dict[str, Any] | None = None,
        graph_autoscaling: bool = True,
    ) -> DeployReply:
        """Set an application's desired state and wait until it runs (or cannot); with ``wait=False``,
        answer once the state is set (``serve.run(_blocking=False)``: status shows how it goes).

        Deployments whose replica version is unchanged keep their replicas; a
        ``user_config`` change reconfigures them; a count change only scales.
        ``code_paths`` are the deploying driver's import directories: replicas
        belong to the controller's job, so they get the ones it lacks.
        ``proxy_location`` (HeadOnly, EveryNode; None keeps the current one) says where HTTP proxies run.
        ``grpc_options`` (checked by grpc_options_dict; None keeps the running proxy's) turn gRPC on or off.
        """
        await self._recovered.wait()
        try:
            app: ir.AppIR = loads_with_paths(app_bytes, code_paths)
        except Exception as exc:  # user code that does not import here
            return DeployReply(
                {},
                Refusal(
                    "code-import",
                    f"the cluster cannot load the graph's code: {type(exc).__name__}: {exc}. Modules the graph uses "
                    "must be importable where replicas run: deploy from their directory or install them.",
                ),
            )
        self._code_paths.extend(p for p in code_paths if p not in self._code_paths)
        while name in self._apps.apps and self._apps.apps[name].deleting:  # a delete still draining: let it finish
            await asyncio.sleep(0.05)
        async with self._lock:
            for other in self._apps.apps.values():
                if other.name != name and route_prefix is not None and other.route_prefix == route_prefix and not other.deleting:
                    return DeployReply(
                        {}, Refusal("route-taken", f"route prefix {route_prefix!r} is already used by application {other.name!r}")
                    )
            if http is not None and route_prefix is not None:
                host, port, options = http
                error = await self._ensure_proxy(host, port, options, name, proxy_location, grpc_options)
                if error:
                    return DeployReply({}, Refusal("proxy", error))
            changes = self._apps.set_target(name, app, app_bytes, tuple(code_paths), route_prefix, compiled, graph_autoscaling)
            self._signals.dirty = True
            await self._push_routes()
        self._signals.wake()
        if not wait:
            return DeployReply(changes)
        return await self._wait_settled(name, changes)

    async def _wait_settled(self, name: str, changes: dict[str, str]) -> DeployReply:
        deadline = time.monotonic() + START_TIMEOUT_S
        while time.monotonic() < deadline:
            app = self._apps.apps.get(name)
            if app is None:
                return DeployReply(changes, Refusal("deleted", "the application was deleted while it deployed"))
            if app.status == DEPLOY_FAILED:
                return DeployReply(changes, Refusal("replica-failed", app.message))
            if self._apps.settled(name):
                return DeployReply(changes)
            await asyncio.sleep(0.05)
        return DeployReply(
            changes,
            Refusal(
                "timeout",
                f"replicas did not start within {START_TIMEOUT_S:g}s ({self._apps.unsettled(name)}); they keep being "
                "tried. The cluster may lack the resources they ask for: see `ray status`.",
            ),
        )

    async def start_http(
        self,
        host: str | None,
        port: int | None,
        proxy_location: str | None = None,
        options: dict[str, Any] | None = None,
        grpc_options: dict[str, Any] | None = None,
        code_paths: tuple[str, ...] = (),
    ) -> Refusal | None:
        """``serve.start``: the HTTP proxy on host:port (and gRPC, if asked) before any deploy; why not, if it cannot be.

        ``code_paths`` are the caller's import directories, where the proxy finds gRPC servicer functions.
        """
        await self._recovered.wait()
        self._code_paths.extend(p for p in code_paths if p not in self._code_paths)
        async with self._lock:
            error = await self._ensure_proxy(host, port, options, "", proxy_location, grpc_options)
            if error is None:
                await self._push_routes()
                return None
            return Refusal("proxy", error)

    async def set_logging_config(self, logging_config: Any) -> Refusal | None:
        """``serve.start(logging_config=)`` (and a config's top-level one): the proxies' logs, as in Ray Serve."""
        await self._recovered.wait()
        error = await self._proxies.set_logging_config(logging_config)
        self._signals.dirty = True
        return Refusal("logging", error) if error else None

    async def get_app(self, name: str) -> AppRecord | None:
        await self._recovered.wait()
        state = self._apps.apps.get(name)
        if state is None or state.deleting:
            return None
        return AppRecord(state.app, {d: DeploymentInfo(name, d) for d in state.deployments}, state.route_prefix)

    async def logs_dirs(self) -> list[str]:
        """Every ``logging_config.logs_dir`` a running deployment or the proxies write to (``servegraph logs
        --request-id`` reads them)."""
        await self._recovered.wait()
        configs = [dep.spec.options.logging_config for state in self._apps.apps.values() for dep in state.deployments.values()]
        configs.append(self._proxies.logging_config)
        return sorted({config.logs_dir for config in configs if config is not None and config.logs_dir})

    async def graph_outline(self, name: str) -> AppRecord | None:
        """``get_app`` without the user's code or values (see compiler/outline.py): what the live graph view
        draws, readable in a process that cannot import the graph's modules (the HTTP proxy, the CLI)."""
        record = await self.get_app(name)
        return None if record is None else AppRecord(outline(record.app), {}, record.route_prefix)

    async def delete_app(self, name: str) -> bool:
        """Stop every replica of an application (draining them) and wait until they are gone."""
        await self._recovered.wait()
        async with self._lock:
            if not self._apps.delete(name):
                return False
            self._signals.dirty = True
            await self._push_routes()
        self._signals.wake()
        while name in self._apps.apps:
            await asyncio.sleep(0.05)
        return True

    async def shutdown(self) -> None:
        names = list(self._apps.apps)
        await asyncio.gather(*[self.delete_app(n) for n in names])
        actors = self._lifecycle.actors
        for group in (actors.live_groups() or {}).values():
            actors.remove_group(group)  # every replica is gone, so any group left is a leak
        self._proxies.forget()
        checkpoint.delete()

    def reserved(self, exclude: str | None = None) -> dict[str, float]:
        """Resources the replicas of every application but ``exclude`` hold."""
        return self._apps.reserved(exclude)

    # Status ------------------------------------------------------------------------------
    async def status(self) -> StatusReply:
        await self._recovered.wait()
        apps = {name: self._apps.report(state) for name, state in sorted(self._apps.apps.items())}
        http = self._proxies.http
        proxy: dict[str, Any] | None = None
        if http is not None and self._proxies.serving():
            proxy = {"host": http[0], "port": http[1]}
            if self._proxies.grpc:
                proxy["grpc_port"] = self._proxies.grpc["port"]
        return StatusReply(apps, proxy, self._proxies.states() if http is not None else {})

    # HTTP ------------------------------------------------------------------------------
    async def _ensure_proxy(
        self,
        host: str | None,
        port: int | None,
        options: dict[str, Any] | None,
        app: str,
        location: str | None,
        grpc: dict[str, Any] | None = None,
    ) -> str | None:
        """Start the head node's HTTP proxy on host:port, or check the running one is there (see proxy_state.py).

        None (host, port or options not given by the caller) keeps what the running proxy uses, as in Ray
        Serve, where the options of a running Serve win; with no proxy yet, the defaults (127.0.0.1:8000).
        """
        running_host, running_port = self._proxies.http or ("127.0.0.1", 8000)
        host = running_host if host is None else host
        port = running_port if port is None else port
        if options is None:
            options = self._proxies.options if self._proxies.http is not None else {}
        # Normalised, so "defaults left out" and "defaults written out" are the same proxy.
        options = {**HTTP_OPTION_DEFAULTS, **options}
        if grpc is None:
            grpc = self._proxies.grpc if self._proxies.http is not None else {}
        others = sorted(n for n, s in self._apps.apps.items() if n != app and s.route_prefix is not None)
        error = await self._proxies.ensure_head(host, port, options, location, others, grpc)
        self._signals.dirty = True
        return error

    async def _push_routes(self) -> None:
        await self._proxies.set_routes(self._apps.routes(), self._code_paths)

    # Surviving a restart (see checkpoint.py) ------------------------------------------------
    def _checkpoint(self) -> None:
        """Write what a restarted controller needs to re-attach: apps, targets, replicas, proxy."""
        checkpoint.write(checkpoint.snapshot(self._apps.apps, self._proxies, self._code_paths), ray.cloudpickle.dumps)

    async def _recover(self) -> None:
        raw = checkpoint.load()
        groups = self._lifecycle.actors.live_groups()
        if not raw:
            checkpoint.stop_orphans(self._apps, self._lifecycle, groups)
            return
        data = pickle.loads(raw)
        self._code_paths = list(data.get("code_paths", []))
        checkpoint.recover(data, self._apps, self._lifecycle, groups, loads_with_paths)
        checkpoint.stop_orphans(self._apps, self._lifecycle, groups)
        self._proxies.recover(
            data.get("http"), data.get("http_options") or {}, data.get("proxy_location", EVERY_NODE), data.get("grpc_options")
        )
        self._proxies.logging_config = data.get("logging_config")
        await self._push_routes()
        print(f"servegraph: controller recovered {len(self._apps.apps)} application(s) from its checkpoint", file=sys.stderr)


def _kill(actors: list[Any]) -> None:
    """End proxy actors (replicas are ended through replicas.py)."""
    for actor in actors:
        try:
            ray.kill(actor, no_restart=True)
        except Exception:  # already dead
            pass


# Ray's stubs cannot type actor classes created at runtime.
ControllerActor: Any = ray.remote(Controller)
HTTPProxy: Any = ray.remote(_HTTPProxy)
