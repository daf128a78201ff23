"""What a handle call returns outside an event loop: one object for both handle eras.

The seed's ``RayServeSyncHandle.remote()`` returns a ``ray.ObjectRef`` (``ray.get``, ``ray.wait``,
``await``, passed on unresolved); Ray Serve 2.x's ``DeploymentHandle.remote()`` returns a
``DeploymentResponse`` (``.result(timeout_s=)``, ``._to_object_ref_sync()``, ``.cancel()``). Code of
either era calls ``serve.run(app).remote(x)`` and uses the result its own way, so the result is both:
:class:`DriverResponse`, a ``ray.ObjectRef`` subclass with the DeploymentResponse methods (no extra
hop, no copy). ``.remote()`` never waits for a free replica (see ``Router.submit_nowait``).

If the replica dies before answering, ``.result()`` sends the request once more to another replica
(the caller holds its arguments), as ``DeploymentResponse`` does. Inside a replica, the seed's
``ref = await handle.remote(x)`` gives one too, and ``await ref`` sends the call again the same way: a
downstream replica killed under a request no longer fails the request that called it.
"""

from __future__ import annotations

import asyncio
import functools
import time
from collections.abc import Awaitable, Callable
from typing import Any

import ray
from ray import ObjectRef

from ...errors import GraphError
from ..common.codec import treat_as_ref
from ..common.context import has_running_loop
from ..ray_compat import ref_future
from .long_poll import runtime_client

#: Before a request is sent again after a replica's death: time for the membership update to reach
#: every router on its path (tens of milliseconds), so the retry does not meet the same dead replica.
RETRY_DELAY_S = 0.1

#: (send again: () -> ObjectRef) for a request that may be re-sent once on a replica's death.
Resend = Callable[[], Any]
#: The same from an event loop: () -> awaitable of the new ObjectRef.
ResendAsync = Callable[[], Awaitable[Any]]


def note_actor_death(exc: BaseException) -> bool:
    """If ``exc`` says a replica died (this request's, or one it called), stop routing to it here; True if so.

    A user exception (RayTaskError) counts only when what it carries is a
    replica's death: a deployment whose call to a dead replica failed.
    """
    if not isinstance(exc, ray.exceptions.RayActorError):
        return False
    actor_id = getattr(exc, "actor_id", None) or getattr(getattr(exc, "cause", None), "actor_id", None)
    if actor_id:
        runtime_client().drop_actor(actor_id)
    return True


def user_error(exc: ray.exceptions.RayTaskError) -> BaseException:
    """The user's own exception inside Ray's wrapper, so its message shows no replica internals."""
    cause = exc.cause
    while isinstance(cause, ray.exceptions.RayTaskError) and cause.cause is not None:
        cause = cause.cause
    return cause if isinstance(cause, BaseException) else exc


#: How many times a request is sent again when the replicas it reached died under it. A node that goes down
#: takes several replicas at once, and a router learns of each death only when a call hits it (or when the
#: controller's update arrives), so one resend may meet the next dead replica.
RESENDS = 3


def resend_delay(exc: BaseException, resends: int) -> float | None:
    """The one retry-on-death rule, for every caller that holds a request's arguments (handles, plans, the
    proxies): after a request failed with ``exc`` having been sent again ``resends`` times, how long to wait
    before sending it once more, or None to give up (``exc`` is not a replica's death, or :data:`RESENDS`
    resends were made). The dead replica is dropped from this process's routers either way; each wait is
    longer than the last, so the controller's update has time to reach them."""
    if resends >= RESENDS or not note_actor_death(exc):
        return None
    return RETRY_DELAY_S * (resends + 1)


#: Told, with the ref, that a request's answer (its value, or the user's error) has arrived: its router counts it
#: done at once (see Router.release), instead of asking Ray about it (``ray.wait`` on a pending ref takes ~80 us).
Answered = Callable[[ObjectRef], None]


def read(ref: Any, timeout_s: float | None, resend: Resend | None, answered: Answered | None = None) -> Any:
    """``ray.get`` a request's ref as ``.result()`` does: the user's error unwrapped; sent again (at most
    :data:`RESENDS` times, within the timeout) while the replicas it reached die under it."""
    deadline = None if timeout_s is None else time.monotonic() + timeout_s
    resends = 0
    while True:
        remaining = None if deadline is None else max(0.0, deadline - time.monotonic())
        try:
            value = ray.get(ref, timeout=remaining)
        except ray.exceptions.RayActorError as exc:  # before RayTaskError: a death may come wrapped in one
            delay = None if resend is None else resend_delay(exc, resends)
            if delay is None:
                raise
        except ray.exceptions.TaskCancelledError:
            raise RequestCancelledError() from None
        except ray.exceptions.RayTaskError as exc:
            _tell(answered, ref)
            raise user_error(exc) from None
        else:
            _tell(answered, ref)
            return value
        resends += 1
        time.sleep(delay)
        assert resend is not None  # a delay is only given with something to resend
        ref = resend()


def _answered_for(answered: Answered, sent: ObjectRef, ref: Any) -> None:
    """A DriverResponse's answer arrived: its router is told of the ref it sent (the response is a copy of it),
    or of the one it sent again."""
    answered(sent if type(ref) is not ObjectRef else ref)


def _plain(ref: ObjectRef) -> ObjectRef:
    return ref


class _Value:
    """Awaits a ref's value as a plain ObjectRef does (a DriverResponse's own ``__await__`` resends); any other
    awaitable (a compiled lane's GraphRef, a LocalRef) as it is."""

    __slots__ = ("ref",)

    def __init__(self, ref: Any):
        self.ref = ref

    def __await__(self) -> Any:
        ref = self.ref
        return ref_future(ref).__await__() if isinstance(ref, ObjectRef) else ref.__await__()


def _tell(answered: Answered | None, ref: Any) -> None:
    if answered is not None and isinstance(ref, ObjectRef):  # not a compiled lane's GraphRef: no router sent it
        answered(ref)


async def awaited_resending(ref: Any, resend: ResendAsync, answered: Answered | None = None) -> Any:
    """``await ref``, sent again (at most :data:`RESENDS` times) while the replicas it reached die under it;
    ``answered`` is told of each ref whose answer came."""
    resends = 0
    while True:
        try:
            value = await _Value(ref)
        except ray.exceptions.RayActorError as exc:  # a death may come wrapped in a RayTaskError: counted too
            delay = resend_delay(exc, resends)
            if delay is None:
                raise
        except ray.exceptions.RayTaskError:  # the user's error: the request is over
            _tell(answered, ref)
            raise
        else:
            _tell(answered, ref)
            return value
        resends += 1
        await asyncio.sleep(delay)
        ref = await resend()


class RequestCancelledError(GraphError, ray.exceptions.TaskCancelledError):
    """A request its caller cancelled (``response.cancel()``), as Ray Serve raises it: a ``RayServeException``
    and Ray's ``TaskCancelledError``."""

    code = "request-cancelled"

    def __init__(self, request_id: str | None = None):
        self._message = f"Request {request_id} was cancelled." if request_id else "Request was cancelled."
        GraphError.__init__(self, self._message)
        self._request_id = request_id
        self.args = (request_id,)  # pickled and raised again elsewhere as the same error

    def __str__(self) -> str:
        return self._message


#: Ray Serve's words (and condition) for a blocking call of a response or stream inside a running event loop.
SYNC_IN_LOOP = "Sync methods should not be called from within an `asyncio` event loop."


class DriverResponse(ObjectRef):
    """A sent request's result: a ``ray.ObjectRef`` that is also a ``DeploymentResponse``.

    Pickled (nested in another call's arguments, or ``ray.put``) it becomes the plain ObjectRef, so
    Ray's reference counting sees it as any other ref.
    """

    __slots__ = ("_resend", "_resend_async", "_resent", "_answered")

    _resend: Resend | None
    _resend_async: ResendAsync | None
    #: Told when this request's answer arrived (see :data:`Answered`): the router that sent it counts it done.
    _answered: Answered | None
    #: The ref of the call sent again after the first one's replica died (see __await__), once there is one.
    _resent: ObjectRef | None

    @classmethod
    def of(
        cls, ref: ObjectRef, resend: Resend | None = None, resend_async: ResendAsync | None = None, answered: Answered | None = None
    ) -> DriverResponse:
        out = cls(ref.binary(), ref.owner_address(), ref.call_site())
        out._resend = resend
        out._resend_async = resend_async
        out._resent = None
        out._answered = None if answered is None else functools.partial(_answered_for, answered, ref)
        return out

    def __await__(self) -> Any:
        """The value, as awaiting any ObjectRef gives it (the user's error as Ray's RayTaskError); made with
        ``resend_async`` (a call from inside a replica), sent again while the replicas it reaches die. Awaited
        again, the answer of the call that was sent last."""
        resent = getattr(self, "_resent", None)
        if resent is not None:
            return ref_future(resent).__await__()
        resend = getattr(self, "_resend_async", None)
        if resend is None:
            return ref_future(self).__await__()

        async def resend_and_keep() -> ObjectRef:
            self._resent = await resend()
            return self._resent

        return awaited_resending(self, resend_and_keep, getattr(self, "_answered", None)).__await__()

    def __reduce__(self) -> tuple:
        return (_plain, (ObjectRef(self.binary(), self.owner_address(), self.call_site()),))

    def result(self, *, timeout_s: float | None = None) -> Any:
        """Block until the result is ready; the user's exception if the call raised.

        Raises:
            GetTimeoutError: no answer within ``timeout_s`` seconds.
            RuntimeError: called inside a running event loop (it would stall the loop; ``await`` the ref).
        """
        if has_running_loop():
            raise RuntimeError(SYNC_IN_LOOP + " Use `await response` instead.")
        resend, self._resend = getattr(self, "_resend", None), None
        return read(self, timeout_s, resend, getattr(self, "_answered", None))

    def _to_object_ref_sync(self, _record_telemetry: bool = True) -> ObjectRef:
        """Ray Serve's name: the ObjectRef of the result (this object is one)."""
        return self

    async def _to_object_ref(self, _record_telemetry: bool = True) -> ObjectRef:
        return self

    def cancel(self) -> None:
        """Cancel the request (Ray cancels the replica's task; a finished request is left alone)."""
        ray.cancel(self)


treat_as_ref(DriverResponse)
