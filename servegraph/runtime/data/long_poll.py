"""How every process learns replica sets from the controller and reports load to it.

One :class:`RuntimeClient` per process (driver, replica, HTTP proxy) owns the
process's routers. A daemon thread keeps one long-poll call open on the
controller (``Controller.listen``): the call returns as soon as the replica set
of any deployment the process routes to changes, and the thread installs the
new sets in the routers. Requests never wait for the controller; a router keeps
its last replica set while the controller is down or restarting, and the
thread reconnects when it is back (as Ray Serve's ``_private/long_poll.py``).

The same thread reports each autoscaled deployment's load (queued plus in
flight) every ``metrics_interval_s``, and at once when a request waits for a
deployment that has no replica (scale from zero).
"""

from __future__ import annotations

import os
import queue
import threading
import time
import uuid
from collections.abc import Callable
from typing import Any

import ray

from ..common import telemetry
from ..common.records import CONTROLLER_NAME, NAMESPACE
from .router import Membership, Router

#: Seconds between attempts to reach a controller that is down.
_RECONNECT_S = 0.5

Key = tuple[str, str]  # (application, deployment)


class ControllerUnavailable(RuntimeError):
    """No controller answered in time (it was shut down, or is gone), or this process's client was closed."""


class RuntimeClient:
    def __init__(self, cluster: str | None = None, locate: Locator | None = None) -> None:
        #: The cluster (GCS address) this client's routers and thread belong to.
        self.cluster = cluster
        #: Finds the controller (None: there is none now); see set_controller_locator.
        self.locate = locate or find_controller
        self._closed = False
        #: Set by close(): every wait of this client's thread (and of callers looking for the controller) ends.
        self._stop = threading.Event()
        #: Routers, and other listeners (see subscribe), by the key the controller publishes under.
        self._routers: dict[Key, Any] = {}
        self._versions: dict[Key, Any] = {}
        self._lock = threading.Lock()
        self._events: queue.Queue[tuple] = queue.Queue()
        self._generation = 0
        self._controller: Any = None
        # Identifies this process's reports to the autoscaler; not part of any output.
        self.client_id = f"{os.getpid()}:{uuid.uuid4().hex[:8]}"
        self._thread = threading.Thread(target=self._run, name="servegraph-long-poll", daemon=True)
        self._thread.start()

    # Routers ---------------------------------------------------------------------------
    def router(self, app: str, deployment: str) -> Router:
        key = (app, deployment)
        router = self._routers.get(key)
        if router is not None:
            return router
        with self._lock:
            router = self._routers.get(key)
            if router is None:
                router = Router(app, deployment, on_queued=self.poke, local_node=self._local_node())
                self._routers[key] = router
                self._events.put(("subscribe",))
        return router

    def _local_node(self) -> str | None:
        """This process's node if its routers prefer replicas there: in an actor (a replica, the HTTP proxy),
        as Ray Serve's proxies prefer their node; a driver's handles spread over every node."""
        context = ray.get_runtime_context()
        return context.get_node_id() if context.get_actor_id() is not None else None

    def subscribe(self, key: Key, listener: Any) -> None:
        """Push what the controller publishes under ``key`` to ``listener.update`` (compiled lanes use this).

        A listener also offers ``drop_actor(actor_id)``, ``load()`` and ``metrics_interval_s``, as routers do.
        """
        with self._lock:
            self._routers[key] = listener
            self._events.put(("subscribe",))

    def unsubscribe(self, key: Key, listener: Any) -> None:
        """Stop pushing ``key`` to ``listener`` (a lane set that closed); a router under the key stays."""
        with self._lock:
            if self._routers.get(key) is listener:
                del self._routers[key]

    def controller(self, timeout: float | None = None) -> Any:
        """The controller actor (found again, or revived, if it was lost).

        Raises:
            ControllerUnavailable: none within ``timeout`` seconds (None: as long as it takes), or closed.
        """
        return self._get_controller(timeout)

    def drop_actor(self, actor_id: str) -> None:
        """A call to this actor failed with actor death: no router of this process uses it again."""
        for router in list(self._routers.values()):
            router.drop_actor(actor_id)

    def poke(self) -> None:
        """Report load now (a request waits for a deployment with no replica)."""
        self._events.put(("report",))

    def close(self) -> None:
        """Stop the thread (the process left the cluster these routers belong to)."""
        self._closed = True
        self._stop.set()
        self._events.put(("stop",))
        for router in list(self._routers.values()):
            if isinstance(router, Router):  # lane listeners (see subscribe) have their own end
                router.close()

    # The thread ------------------------------------------------------------------------
    def _run(self) -> None:
        next_report = time.monotonic()
        while not self._closed:
            interval = self._report_interval()
            timeout = None if interval is None else max(0.0, next_report - time.monotonic())
            try:
                event = self._events.get(timeout=timeout)
            except queue.Empty:
                event = ("report",)
            try:
                kind = event[0]
                if self._closed:
                    return
                if kind == "subscribe":
                    self._listen()
                elif kind == "reply":
                    self._on_reply(*event[1:])
                elif kind == "report":
                    self._report()
                    next_report = time.monotonic() + (interval or 1.0)
            except ControllerUnavailable:  # closed
                return
            except Exception:  # the thread must outlive any one failure; the next event retries
                if not ray.is_initialized():  # this process left its cluster (ray.shutdown, or at exit)
                    self.close()
                    return
                self._stop.wait(_RECONNECT_S)
                self._controller = None
                self._events.put(("subscribe",))

    def _report_interval(self) -> float | None:
        intervals = [r.metrics_interval_s for r in list(self._routers.values()) if r.metrics_interval_s]
        return min(intervals) if intervals else None

    def _get_controller(self, timeout: float | None = None) -> Any:
        deadline = None if timeout is None else time.monotonic() + timeout
        while self._controller is None:
            if self._closed:
                raise ControllerUnavailable("servegraph's client in this process was closed")
            self._controller = self.locate()
            if self._controller is None:  # gone: routers keep their last replica sets meanwhile
                if deadline is not None and time.monotonic() >= deadline:
                    raise ControllerUnavailable(f"no servegraph controller answered within {timeout:g} s")
                self._stop.wait(_RECONNECT_S if deadline is None else min(_RECONNECT_S, max(0.0, deadline - time.monotonic())))
        return self._controller

    def _listen(self) -> None:
        """Open a new long-poll call covering every router; an older one's answer is still applied."""
        controller = self._get_controller()
        self._generation += 1
        generation = self._generation
        with self._lock:
            snapshot = {key: self._versions.get(key) for key in self._routers}
        future = controller.listen.remote(snapshot).future()
        future.add_done_callback(lambda f: self._events.put(("reply", generation, f)))

    def _on_reply(self, generation: int, future: Any) -> None:
        try:
            updates: dict[Key, tuple[Any, Membership]] = future.result()
        except Exception:  # the controller died mid-call; find it (or its successor) again
            if generation == self._generation:
                self._stop.wait(_RECONNECT_S)
                self._controller = None
                self._listen()
            return
        for key, (version, membership) in updates.items():
            known = self._versions.get(key)
            if known is not None and version <= known:
                continue  # an older call's stale answer
            self._versions[key] = version
            router = self._routers.get(key)
            if router is not None:
                router.update(membership)
        if generation == self._generation:
            self._listen()

    def _report(self) -> None:
        loads = {key: router.load() for key, router in list(self._routers.items()) if router.metrics_interval_s}
        if loads:
            self._get_controller().record_metrics.remote(self.client_id, loads)


def find_controller() -> Any:
    """The running controller actor, or None: what a process that was handed no locator can do."""
    try:
        return ray.get_actor(CONTROLLER_NAME, namespace=NAMESPACE)
    except ValueError:
        return None


#: Finds the controller for this process's client: () -> the controller actor, or None if there is none.
Locator = Callable[[], Any]

_LOCATOR: Locator = find_controller


def set_controller_locator(locate: Locator) -> None:
    """How this process's clients find the controller (the control plane hands in one that also starts a
    controller lost for good, see ``control/locate.py``); a client made later uses it."""
    global _LOCATOR
    _LOCATOR = locate
    client = _CLIENT
    if client is not None:
        client.locate = locate


_CLIENT: RuntimeClient | None = None
_CLIENT_LOCK = threading.Lock()


def close_runtime_client() -> None:
    """Stop this process's client and its thread (servegraph was shut down); the next call makes a new one."""
    global _CLIENT
    with _CLIENT_LOCK:
        client, _CLIENT = _CLIENT, None
    if client is not None:
        client.close()
    telemetry.stop()  # what this process recorded is exported first


def runtime_client() -> RuntimeClient:
    """This process's client for the cluster it is connected to (a new one after ``ray.shutdown()``/``ray.init()``)."""
    global _CLIENT
    cluster = ray.get_runtime_context().gcs_address
    client = _CLIENT
    if client is None or client.cluster != cluster:
        with _CLIENT_LOCK:
            if _CLIENT is None or _CLIENT.cluster != cluster:
                if _CLIENT is not None:
                    _CLIENT.close()
                _CLIENT = RuntimeClient(cluster, _LOCATOR)
            client = _CLIENT
    return client
