"""``serve.get_replica_context()``: which replica the calling code runs in, as Ray Serve names it.

Set once per replica process when its constructor starts (a replica is one Ray actor, so one process
holds at most one replica).
"""

from __future__ import annotations

import asyncio
import contextvars
import dataclasses
import os
import random
from typing import Any

from ...errors import GraphError


@dataclasses.dataclass(frozen=True)
class DeploymentID:
    """Ray Serve's ``DeploymentID``: a deployment's name and its application's."""

    name: str
    app_name: str


@dataclasses.dataclass(frozen=True)
class ReplicaID:
    """Ray Serve's ``ReplicaID``: a replica's unique id within its deployment."""

    unique_id: str
    deployment_id: DeploymentID

    def to_full_id_str(self) -> str:
        return f"{self.deployment_id.app_name}#{self.deployment_id.name}#{self.unique_id}"


@dataclasses.dataclass
class ReplicaContext:
    """Ray Serve's ``ReplicaContext``: ``app_name``, ``deployment``, ``replica_tag``, ``replica_id`` and
    ``servable_object`` (the user's instance; None until its constructor has returned)."""

    replica_id: ReplicaID
    servable_object: Any = None

    @property
    def app_name(self) -> str:
        return self.replica_id.deployment_id.app_name

    @property
    def deployment(self) -> str:
        return self.replica_id.deployment_id.name

    @property
    def replica_tag(self) -> str:
        return self.replica_id.unique_id


_CONTEXT: ReplicaContext | None = None


def set_replica_context(app: str, deployment: str, replica_id: str) -> ReplicaContext:
    global _CONTEXT
    _CONTEXT = ReplicaContext(ReplicaID(replica_id, DeploymentID(deployment, app)))
    return _CONTEXT


def current_replica() -> ReplicaContext | None:
    """The replica this process runs, or None (a driver, a proxy, the controller)."""
    return _CONTEXT


def get_replica_context() -> ReplicaContext:
    """The replica this code runs in.

    Raises:
        GraphError: called outside a deployment's replica (Ray Serve's ``RayServeException``).
    """
    if _CONTEXT is None:
        raise GraphError(
            "`serve.get_replica_context()` may only be called from within a Ray Serve deployment. "
            "(servegraph: call it in a deployment's constructor or methods, not in the driver)"
        )
    return _CONTEXT


#: The model id of the request being handled (``handle.options(multiplexed_model_id=...)``, or the HTTP
#: header ``serve_multiplexed_model_id``); "" when it names none.
_MODEL_ID: contextvars.ContextVar[str] = contextvars.ContextVar("servegraph_multiplexed_model_id", default="")

#: The HTTP header that names a request's model, as in Ray Serve.
MODEL_ID_HEADER = "serve_multiplexed_model_id"


def get_multiplexed_model_id() -> str:
    """The model id of the request this code handles ("" if the request names none), as in Ray Serve."""
    return _MODEL_ID.get()


def set_multiplexed_model_id(model_id: str) -> contextvars.Token:
    return _MODEL_ID.set(model_id)


def reset_multiplexed_model_id(token: contextvars.Token) -> None:
    _MODEL_ID.reset(token)


def _normalized(name: str) -> bytes:
    return name.lower().replace("-", "_").encode("latin-1")


def _header_value(scope: dict, normalized: bytes) -> str:
    """The value of the header whose name, lowered with ``-`` read as ``_``, is ``normalized``; "" if none
    (nginx and API gateways rewrite ``_`` to ``-``, and Ray Serve reads both)."""
    for key, value in scope.get("headers", ()):
        if len(key) == len(normalized) and key.lower().replace(b"-", b"_") == normalized:
            return value.decode("latin-1")
    return ""


_MODEL_KEY = _normalized(MODEL_ID_HEADER)


def model_id_of(scope: dict) -> str:
    """The model an HTTP request names in its ``serve_multiplexed_model_id`` header, or ""."""
    return _header_value(scope, _MODEL_KEY)


#: The HTTP header naming a request's session (its requests then stay on one replica, see router.Routing):
#: Ray Serve's, and its environment variable to rename it. Matched without case, ``-`` and ``_`` alike.
SESSION_ID_HEADER = os.environ.get("RAY_SERVE_SESSION_ID_HEADER_KEY", "x-session-id")
_SESSION_KEY = _normalized(SESSION_ID_HEADER)


def session_id_of(scope: dict) -> str:
    """The session an HTTP request names in its session header (:data:`SESSION_ID_HEADER`), or ""."""
    return _header_value(scope, _SESSION_KEY)


# The request being handled -------------------------------------------------------------------
# One request (an HTTP or gRPC call at the proxy, or a handle call from a driver) keeps one id through
# every call it causes: the router sends the caller's context with each call (see router.py), and the
# replica sets it around the user's code. Logs, metrics and traces read it here.


@dataclasses.dataclass(frozen=True, slots=True)
class RequestContext:
    """What travels with every call a request causes.

    ``request_id``: the client's ``X-Request-ID`` (or gRPC ``request_id``), else a new one.
    ``route``: the HTTP route prefix the request came in on ("" for handle calls), as Ray Serve tags metrics.
    ``app``: the application the request entered. ``trace``: the W3C ``traceparent`` of the span that
    made this call ("" with tracing off, see tracing.py).
    """

    request_id: str
    route: str = ""
    app: str = ""
    trace: str = ""


#: Where a compiled lane's input bundle carries the request's context (id, route, app, traceparent).
REQUEST_KEY = "<request>"

_REQUEST: contextvars.ContextVar[RequestContext | None] = contextvars.ContextVar("servegraph_request", default=None)


#: Where request ids come from: a generator of this process's own, seeded from the OS (again in a forked
#: child), so a user's ``random.seed()`` cannot make two processes hand out the same ids.
_IDS = random.Random()
os.register_at_fork(after_in_child=_IDS.seed)


def new_request_id() -> str:
    """A new request id: 32 hex digits, as ``uuid.uuid4().hex`` gives.

    Not uuid4 itself: its ``os.urandom`` call lets go of the GIL, and in a busy proxy or replica (Ray's
    threads and the event loop taking turns) getting it back costs a thread switch on every request.
    """
    return f"{_IDS.getrandbits(128):032x}"


def current_request() -> RequestContext | None:
    """The request this code is handling (None outside one: a driver between calls, a constructor)."""
    return _REQUEST.get()


def current_request_id() -> str | None:
    request = _REQUEST.get()
    return request.request_id if request is not None else None


def set_request(request: RequestContext | None) -> contextvars.Token:
    return _REQUEST.set(request)


def reset_request(token: contextvars.Token) -> None:
    _REQUEST.reset(token)


def has_running_loop() -> bool:
    """Whether this thread runs an event loop now (a blocking call here would stall it)."""
    return asyncio._get_running_loop() is not None  # get_running_loop() without raising where there is none
