"""What crosses actor boundaries: the names of servegraph's actors, call names and the header each call carries, lanes, replica phases.

Every plane reads these and none owns them, so they live below all of them: the data plane sends call
names, replicas receive them, the controller publishes lanes and reads replica phases.
"""

from __future__ import annotations

import dataclasses
from typing import Any

#: Ray namespace of servegraph's named actors (controller, HTTP proxy).
NAMESPACE = "servegraph"
CONTROLLER_NAME = "servegraph_controller"
PROXY_NAME = "servegraph_proxy"

#: The caller name of an InputNode graph's first nodes (the request's input) in edge metrics.
INPUT = "<input>"

#: The pseudo-method that sends (scope, body) to the ingress's HTTP entry point.
HTTP = "<http>"


class StreamMethod(str):
    """A method name whose call streams: the replica's generator yields results as they come.

    The router sends it with ``num_returns="streaming"`` and returns Ray's ObjectRefGenerator.
    """

    __slots__ = ()

class ModelCall(str):
    """A method name whose request names a multiplexed model (``handle.options(multiplexed_model_id=)``).

    The router prefers a replica that holds the model; the replica's code reads the id with
    ``serve.get_multiplexed_model_id()``.
    """

    model_id: str

    def __new__(cls, method: str, model_id: str) -> ModelCall:
        call = super().__new__(cls, method)
        call.model_id = model_id
        return call

    def __reduce__(self) -> tuple:
        return (ModelCall, (str(self), self.model_id))


class EdgeMethod(str):
    """A method name sent by a graph's plan, naming the graph nodes whose results it takes (its callers in
    edge metrics: deployment names, or ``<input>`` for the request's input)."""

    callers: tuple[str, ...]

    def __new__(cls, method: str, callers: tuple[str, ...]) -> EdgeMethod:
        call = super().__new__(cls, method)
        call.callers = callers
        return call

    def __reduce__(self) -> tuple:
        return (EdgeMethod, (str(self), self.callers))


#: What a replica receives ahead of a call's arguments: ``[method, request id, route, application,
#: traceparent, callers, sent_at]``. ``request id`` ... ``traceparent`` are the caller's request (see
#: context.RequestContext); ``callers`` the edge sources of this call (a list: see EdgeMethod; a replica's own
#: deployment for calls its code makes; empty for a driver's); ``sent_at`` ``time.time()`` when sent (0: unknown).
#: A list of plain strings and numbers, because Ray packs those with msgpack: a tuple or a str subclass goes
#: through pickle instead, which costs several times as much on every hop.
CallHeader = list

#: Where each field sits in a :data:`CallHeader`.
METHOD, REQUEST, CALLERS, SENT_AT = 0, slice(1, 5), 5, 6


def call_header(method: str, request: tuple[str, str, str, str], callers: tuple[str, ...] | list[str], sent_at: float) -> CallHeader:
    """The header a call is sent with (see :data:`CallHeader`).

    >>> call_header("predict", ("id", "/", "app", ""), ("A",), 0.0)
    ['predict', 'id', '/', 'app', '', ['A'], 0.0]
    """
    return [str(method), *request, list(callers), sent_at]


#: First element of what handle_http returns for a StreamingResponse: (STREAM, replica, stream id, status, headers).
STREAM = "<stream>"

# A replica's lifecycle, as it reports it to a controller that has just restarted (see ``phase``):
# the controller brings it to exactly the state it claims, or replaces it.
#: Created; the user's constructor has not been asked to run.
CONSTRUCTED = "constructed"
#: The user's constructor (and first reconfigure) is running.
INITIALIZING = "initializing"
#: The user's object exists: the replica may take requests.
READY = "ready"
#: The user's constructor raised (``error`` says how).
FAILED = "failed"
#: ``reconfigure`` is running on a ready replica.
RECONFIGURING = "reconfiguring"
#: Finishing its requests before it ends; then ``__del__`` ran.
DRAINING, STOPPED = "draining", "stopped"


#: The pseudo-deployment under which lane assignments are published to owners (not a valid deployment name).
LANES_KEY = "#lanes"


@dataclasses.dataclass(frozen=True)
class LaneInfo:
    """One lane as owners receive it: its members are (deployment, replica id, actor handle)."""

    lane_id: int
    owner_id: str
    members: tuple[tuple[str, str, Any], ...]
    #: The node the owner and every member run on.
    node_id: str | None = None

    def actors(self) -> dict[str, Any]:
        return {deployment: actor for deployment, _, actor in self.members}


@dataclasses.dataclass(frozen=True)
class LaneAssignment:
    """What the controller publishes under ``(app, LANES_KEY)``."""

    lanes: tuple[LaneInfo, ...]
    #: Why the application has no lanes at all (ineligible graph, turned off), or "".
    reason: str = ""
    #: The plan lanes compile (an ir.Plan): the deployed one, whatever plan a caller's handle holds.
    plan: Any = None
