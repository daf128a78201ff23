"""The controller: one named, detached actor that owns every application's replicas.

It creates and kills replicas and tells the HTTP proxy the routes. It is never
on a request's path: handles hold the replicas' actor handles and route
themselves. ``servegraph status`` and ``serve.status()`` read its state from
any process connected to the cluster.
"""

from __future__ import annotations

import asyncio
import dataclasses
import hashlib
import os
import sys
from typing import Any

import cloudpickle
import ray
import ray.cloudpickle
from ray.actor import ActorHandle

from ..compiler import ir
from .cluster import NAMESPACE, PROXY_NAME
from .codec import loads_with_paths
from .driver_http import route_adapter
from .handle import DeploymentInfo
from .proxy import HTTPProxy as _HTTPProxy
from .replica import replica_actor_class

#: How long replicas may take to start before a deploy fails.
START_TIMEOUT_S = float(os.environ.get("SERVEGRAPH_REPLICA_START_TIMEOUT_S", "300"))


@dataclasses.dataclass
class DeploymentState:
    spec: ir.DeploymentIR
    version: str
    replicas: list[ActorHandle]
    status: str = "UPDATING"
    message: str = ""

    def info(self, app: str) -> DeploymentInfo:
        return DeploymentInfo(app, self.spec.name, self.replicas, self.spec.options.max_ongoing_requests)


@dataclasses.dataclass
class AppState:
    name: str
    app: ir.AppIR
    route_prefix: str | None
    deployments: dict[str, DeploymentState]
    status: str = "DEPLOYING"
    message: str = ""


def _version(spec: ir.DeploymentIR, deps: dict[str, str]) -> str:
    """What forces new replicas when it changes: code, constructor args, actor options, replicas, handles."""
    h = hashlib.sha256()
    for part in (
        spec.target,
        spec.init_args,
        spec.init_kwargs,
        spec.options.actor_options(),
        spec.options.replicas(),
        spec.options.max_ongoing_requests,
        [deps[name] for name in spec.handles],
    ):
        h.update(cloudpickle.dumps(part))
    return h.hexdigest()[:16]


def _with_code_paths(options: dict[str, Any], code_paths: list[str]) -> dict[str, Any]:
    """Actor options whose runtime_env puts ``code_paths`` on the replica's PYTHONPATH."""
    if not code_paths:
        return options
    runtime_env = dict(options.get("runtime_env") or {})
    env_vars = dict(runtime_env.get("env_vars") or {})
    # An actor's env_vars replace its job's, so keep the PYTHONPATH the job gave (ours) after the new paths.
    inherited = [env_vars.get("PYTHONPATH"), os.environ.get("PYTHONPATH")]
    env_vars["PYTHONPATH"] = os.pathsep.join([*code_paths, *filter(None, inherited)])
    runtime_env["env_vars"] = env_vars
    return {**options, "runtime_env": runtime_env}


def _describe_failure(exc: BaseException) -> str:
    cause = getattr(exc, "cause", None) or exc
    text = str(cause)
    # Ray's actor death message buries the user's exception in a traceback; keep its last line.
    lines = [line for line in text.strip().splitlines() if line.strip()]
    for line in reversed(lines):
        if ": " in line and not line.startswith(" "):
            return line.strip()
    return lines[-1].strip() if lines else type(exc).__name__


class Controller:
    def __init__(self) -> None:
        #: sys.path before any driver's directories were added: what replicas get without being told.
        self._own_path = list(sys.path)
        #: Every deploying driver's import directories, for the proxy to load graphs' code.
        self._code_paths: list[str] = []
        self._apps: dict[str, AppState] = {}
        self._proxy: ActorHandle | None = None
        self._http: tuple[str, int] | None = None
        self._lock = asyncio.Lock()

    # Deploying ------------------------------------------------------------------------
    async def _start_replicas(
        self, app: str, spec: ir.DeploymentIR, handles: dict[str, DeploymentInfo], code_paths: list[str]
    ) -> list[ActorHandle]:
        actor_cls = replica_actor_class(spec.target)
        options = _with_code_paths(spec.options.actor_options(), code_paths)
        actors = [
            actor_cls.options(max_concurrency=spec.options.max_ongoing_requests, namespace=NAMESPACE, **options).remote(
                app, spec.name, spec.target, spec.is_function, spec.init_args, spec.init_kwargs, handles
            )
            for _ in range(spec.options.replicas())
        ]
        try:
            if spec.options.user_config is not None:
                await asyncio.wait_for(
                    asyncio.gather(*[a.reconfigure.remote(spec.options.user_config) for a in actors]), START_TIMEOUT_S
                )
            await asyncio.wait_for(asyncio.gather(*[a.ready.remote() for a in actors]), START_TIMEOUT_S)
        except asyncio.TimeoutError:
            self._kill(actors)
            raise RuntimeError(
                f"replicas of {spec.name!r} did not start within {START_TIMEOUT_S:g}s; the cluster may lack "
                f"the resources they ask for ({options}). See `ray status`."
            ) from None
        except Exception as exc:
            self._kill(actors)
            raise RuntimeError(
                f"deployment {spec.name!r} (bound at {spec.call_site}) failed to start: {_describe_failure(exc)}"
            ) from None
        return actors

    @staticmethod
    def _kill(actors: list[ActorHandle]) -> None:
        for actor in actors:
            try:
                ray.kill(actor, no_restart=True)
            except Exception:  # already dead
                pass

    async def deploy_app(
        self,
        name: str,
        app_bytes: bytes,
        route_prefix: str | None,
        http: tuple[str, int] | None,
        code_paths: tuple[str, ...] = (),
    ) -> dict[str, Any]:
        """Deploy or update an application; only deployments whose version changed get new replicas.

        ``code_paths`` are the deploying driver's import directories: replicas
        belong to the controller's job, so they get the ones it lacks.

        Returns {"ok": True, "infos": {...}, "changes": {...}} or {"ok": False, "error": text}.
        """
        try:
            app: ir.AppIR = loads_with_paths(app_bytes, code_paths)
        except Exception as exc:  # user code that does not import here
            return {
                "ok": False,
                "error": f"the cluster cannot load the graph's code: {type(exc).__name__}: {exc}. Modules the "
                "graph uses must be importable where replicas run: deploy from their directory or install them.",
            }
        self._code_paths.extend(p for p in code_paths if p not in self._code_paths)
        async with self._lock:
            for other in self._apps.values():
                if other.name != name and route_prefix is not None and other.route_prefix == route_prefix:
                    return {"ok": False, "error": f"route prefix {route_prefix!r} is already used by application {other.name!r}"}
            if http is not None and route_prefix is not None:
                error = await self._ensure_proxy(*http, name)
                if error:
                    return {"ok": False, "error": error}
            old = self._apps.get(name)
            versions: dict[str, str] = {}
            new_states: dict[str, DeploymentState] = {}
            started: list[ActorHandle] = []
            changes: dict[str, str] = {}
            try:
                for spec in app.deployments:
                    version = _version(spec, versions)
                    versions[spec.name] = version
                    previous = old.deployments.get(spec.name) if old else None
                    if previous is not None and previous.version == version:
                        state = DeploymentState(spec, version, previous.replicas, "HEALTHY")
                        if spec.options.user_config != previous.spec.options.user_config:
                            await asyncio.gather(*[r.reconfigure.remote(spec.options.user_config) for r in state.replicas])
                            changes[spec.name] = "reconfigured"
                        else:
                            changes[spec.name] = "unchanged"
                    else:
                        handles = {h: new_states[h].info(name) for h in spec.handles}
                        missing = [p for p in code_paths if p not in self._own_path]
                        replicas = await self._start_replicas(name, spec, handles, missing)
                        started.extend(replicas)
                        state = DeploymentState(spec, version, replicas, "HEALTHY")
                        changes[spec.name] = "updated" if previous is not None else "created"
                    new_states[spec.name] = state
            except Exception as exc:
                self._kill(started)
                if old is not None:
                    old.message = f"update failed: {exc}"
                return {"ok": False, "error": str(exc)}
            if old is not None:
                kept = {id(r) for s in new_states.values() for r in s.replicas}
                self._kill([r for s in old.deployments.values() for r in s.replicas if id(r) not in kept])
            self._apps[name] = AppState(name, app, route_prefix, new_states, "RUNNING")
            await self._push_routes()
            return {"ok": True, "infos": self._infos(name), "changes": changes}

    async def start_http(self, host: str, port: int) -> str | None:
        """``serve.start``: the HTTP proxy on host:port before any deploy; an error message if it cannot be."""
        async with self._lock:
            error = await self._ensure_proxy(host, port, "")
            if error is None:
                await self._push_routes()
            return error

    def _infos(self, name: str) -> dict[str, DeploymentInfo]:
        state = self._apps[name]
        return {d: s.info(name) for d, s in state.deployments.items()}

    async def get_app(self, name: str) -> dict[str, Any] | None:
        state = self._apps.get(name)
        if state is None:
            return None
        return {"app": state.app, "infos": self._infos(name), "route_prefix": state.route_prefix}

    async def delete_app(self, name: str) -> bool:
        async with self._lock:
            state = self._apps.pop(name, None)
            if state is None:
                return False
            self._kill([r for s in state.deployments.values() for r in s.replicas])
            await self._push_routes()
            return True

    async def shutdown(self) -> None:
        for name in list(self._apps):
            await self.delete_app(name)
        if self._proxy is not None:
            self._kill([self._proxy])
            self._proxy = None

    def reserved(self, exclude: str | None = None) -> dict[str, float]:
        """Resources the replicas of every application but ``exclude`` hold."""
        out: dict[str, float] = {}
        for state in self._apps.values():
            if state.name == exclude:
                continue
            for dep in state.deployments.values():
                opts = dep.spec.options.actor_options()
                n = len(dep.replicas)
                out["CPU"] = out.get("CPU", 0.0) + n * float(opts.get("num_cpus") or 0)
                out["GPU"] = out.get("GPU", 0.0) + n * float(opts.get("num_gpus") or 0)
                for key, amount in (opts.get("resources") or {}).items():
                    out[key] = out.get(key, 0.0) + n * float(amount)
        return out

    # Status ------------------------------------------------------------------------------
    async def status(self) -> dict[str, Any]:
        apps = {}
        for name, state in sorted(self._apps.items()):
            deployments = {}
            for dname, dep in state.deployments.items():
                alive = await self._alive(dep.replicas)
                dead = len(dep.replicas) - alive
                replica_states = {"RUNNING": alive} if alive else {}
                if dead:
                    replica_states["DEAD"] = dead
                deployments[dname] = {
                    "status": "HEALTHY" if not dead else "UNHEALTHY",
                    "replica_states": replica_states,
                    "message": dep.message,
                    "num_replicas": dep.spec.options.replicas(),
                    "class_name": dep.spec.class_name,
                }
            status = state.status
            if status == "RUNNING" and any(d["status"] != "HEALTHY" for d in deployments.values()):
                status = "UNHEALTHY"
            apps[name] = {
                "status": status,
                "message": state.message,
                "route_prefix": state.route_prefix,
                "ingress": state.app.ingress,
                "deployments": deployments,
            }
        proxy = {"host": self._http[0], "port": self._http[1]} if self._http and self._proxy else None
        return {"applications": apps, "proxy": proxy}

    @staticmethod
    async def _alive(replicas: list[ActorHandle]) -> int:
        if not replicas:
            return 0
        alive = await asyncio.gather(*[_ok(r.ready.remote(), timeout=5) for r in replicas])
        return sum(alive)

    # HTTP ------------------------------------------------------------------------------
    async def _ensure_proxy(self, host: str, port: int, app: str) -> str | None:
        """Start the HTTP proxy on host:port, or check the running one is there.

        A proxy already serving other applications elsewhere is not moved: that
        would cut them off. A dead proxy is replaced.
        """
        if self._proxy is not None:
            alive = await _ok(self._proxy.ready.remote(), timeout=5)
            if alive and self._http == (host, port):
                return None
            others = sorted(n for n, s in self._apps.items() if n != app and s.route_prefix is not None)
            if alive and others:
                h, p = self._http
                return (
                    f"the HTTP proxy already serves {', '.join(map(repr, others))} on {h}:{p}; deploy on "
                    f"that host and port, or delete those applications first (servegraph shutdown)"
                )
            self._kill([self._proxy])
            self._proxy = None
            await asyncio.sleep(0.2)  # let the old server release its port
        proxy = HTTPProxy.options(name=PROXY_NAME, namespace=NAMESPACE, num_cpus=0, max_concurrency=10_000).remote(host, port)
        error = await proxy.start.remote()
        if error:
            self._kill([proxy])
            return error
        self._proxy, self._http = proxy, (host, port)
        return None

    async def _push_routes(self) -> None:
        if self._proxy is None:
            return
        routes: dict[str, tuple[Any, ...]] = {}
        for name, state in self._apps.items():
            if state.route_prefix is None:
                continue
            infos = self._infos(name)
            adapter = route_adapter(state.app)
            if state.app.ingress is not None:
                payload = ray.cloudpickle.dumps(adapter) if adapter is not None else None
                routes[state.route_prefix] = ("deployment", name, infos[state.app.ingress], payload)
            else:  # one plan, or {route: plan} for a DAGDriver serving several graphs
                payload = ray.cloudpickle.dumps((state.app.plan or dict(state.app.routes), adapter))
                routes[state.route_prefix] = ("plan", name, infos, payload)
        await self._proxy.set_routes.remote(routes, self._code_paths)


async def _ok(ref: Any, timeout: float | None = None) -> bool:
    try:
        await asyncio.wait_for(asyncio.ensure_future(ref), timeout)
        return True
    except Exception:
        return False


# Ray's stubs cannot type actor classes created at runtime.
ControllerActor: Any = ray.remote(Controller)
HTTPProxy: Any = ray.remote(_HTTPProxy)
