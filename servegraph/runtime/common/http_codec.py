"""How HTTP requests reach replicas and results go back, in one place.

A ``starlette.requests.Request`` cannot cross processes, so the proxy sends
the ASGI scope's plain parts and the body; the replica rebuilds a real
Request. Results go back as (status, headers, body).
"""

from __future__ import annotations

import contextvars
import json
import os
import sys
import traceback
from typing import Any

from .context import RequestContext, current_request_id, set_request

#: Ray Serve's http_options that the proxy applies through uvicorn, with Ray Serve's defaults.
HTTP_OPTION_DEFAULTS: dict[str, Any] = {
    "keep_alive_timeout_s": 90,
    "request_timeout_s": None,
    "ssl_keyfile": None,
    "ssl_certfile": None,
    "ssl_keyfile_password": None,
    "ssl_ca_certs": None,
}

HTTPResult = tuple[int, list[tuple[str, str]], bytes]

#: The header carrying a request's id from the client (if it sent one) through the proxy to the replica and back.
REQUEST_ID_HEADER = "x-request-id"
#: Set to 1 in the proxy's and replicas' environment (development only) to show an error's type and
#: message in its 500 body; by default the body is generic, as Ray Serve's, and names only the request id.
ERROR_DETAILS_ENV = "SERVEGRAPH_HTTP_ERROR_DETAILS"

def set_request_id(request_id: str | None, route: str = "", app: str = "") -> contextvars.Token:
    """The request this task or thread is handling, by id (what :func:`encode_error` and logs name)."""
    return set_request(RequestContext(request_id, route, app) if request_id else None)


def request_id_of(scope: dict) -> str | None:
    for key, value in scope.get("headers", ()):
        if key.lower() == REQUEST_ID_HEADER.encode():
            return value.decode("latin-1")
    return None


_SCOPE_KEYS = ("type", "http_version", "method", "scheme", "path", "raw_path", "query_string", "root_path", "headers", "client", "server")


def portable_scope(scope: Any) -> dict:
    """The scope's plain parts, as a replica receives them: pairs as lists (headers, client, server), because Ray
    packs a dict of strings, bytes, numbers and lists with msgpack, five times cheaper than pickling tuples."""
    out = {k: scope[k] for k in _SCOPE_KEYS if k in scope}
    out["headers"] = [[k, v] for k, v in scope.get("headers", ())]
    for key in ("client", "server"):
        if out.get(key) is not None:
            out[key] = list(out[key])
    return out


def to_wire(result: HTTPResult) -> list:
    """An answer as a replica sends it back: (status, headers, body) as lists, which Ray packs with msgpack
    (see :func:`portable_scope`); the proxy reads it as it reads the tuple."""
    status, headers, body = result
    return [status, [[k, v] for k, v in headers], body]


def make_request(scope: dict, body: bytes) -> Any:
    """A real ``starlette.requests.Request`` that can be sent on to a replica (pickled as scope and body)."""
    from starlette.requests import Request

    request_id = request_id_of(scope)
    if request_id != current_request_id():  # a request rebuilt outside its replica's handling (a DAGDriver's adapter)
        set_request_id(request_id)  # errors while handling it are logged under its id
    global _PortableRequest
    if _PortableRequest is None:  # made once: starlette is imported on first use

        class PortableRequest(Request):
            """A Request that pickles as its scope and body (and is rebuilt where it lands)."""

            def __reduce__(self) -> tuple:
                return (make_request, (portable_scope(self.scope), self._receive.body))  # type: ignore[attr-defined]  # a _BodyOnce

        _PortableRequest = PortableRequest
    request = _PortableRequest(scope, _BodyOnce(body))
    # The body is here already: starlette reads ``_body`` before it streams one (``body()``, ``json()``,
    # ``form()`` and ``stream()`` alike), which saves an async generator and two receive calls per request.
    request._body = body
    return request


#: make_request's Request class, made on first use.
_PortableRequest: Any = None


class _BodyOnce:
    """An ASGI ``receive`` for a buffered request: the body, then a disconnect."""

    __slots__ = ("body", "sent")

    def __init__(self, body: bytes):
        self.body = body
        self.sent = False

    async def __call__(self) -> dict:
        if self.sent:
            return {"type": "http.disconnect"}
        self.sent = True
        return {"type": "http.request", "body": self.body, "more_body": False}


def _one_request(scope: dict, body: bytes) -> tuple[dict, Any, Any]:
    """An ASGI app's view of one buffered request: its scope (``/prefix`` reaching the app's "/" route, as
    ``/prefix/`` does), a ``receive`` giving the body once and then a disconnect when the returned event is
    set, and that event."""
    import asyncio

    scope = dict(scope)
    root = scope.get("root_path", "")
    if root and scope["path"] == root:
        scope["path"] = root + "/"
    ended = asyncio.Event()
    sent = False

    async def receive() -> dict:
        nonlocal sent
        if not sent:
            sent = True
            return {"type": "http.request", "body": body, "more_body": False}
        await ended.wait()
        return {"type": "http.disconnect"}

    return scope, receive, ended


async def call_asgi(app: Any, scope: dict, body: bytes) -> HTTPResult:
    """Run an ASGI app (a FastAPI ingress, a DAGDriver's adapter) on one buffered request."""

    scope, receive, done = _one_request(scope, body)
    status, headers, chunks = 500, [], []

    async def send(message: dict) -> None:
        nonlocal status, headers
        if message["type"] == "http.response.start":
            status = message["status"]
            headers = [(k.decode("latin-1"), v.decode("latin-1")) for k, v in message.get("headers", [])]
        elif message["type"] == "http.response.body":
            chunks.append(message.get("body", b""))
            if not message.get("more_body", False):
                done.set()

    try:
        await app(scope, receive, send)
    finally:
        done.set()
    return status, headers, b"".join(chunks)


async def asgi_response(app: Any, scope: dict, body: bytes) -> Any:
    """Run an ASGI app on one request; its answer as a starlette Response, streamed if the app streams.

    A body sent in one message is a plain Response. A body sent in several (a ``StreamingResponse``,
    server-sent events) becomes a ``StreamingResponse`` whose chunks come as the app sends them (the
    replica hands them to the proxy one by one, see replica.py); if the app fails mid-body, reading
    the next chunk raises, and the proxy aborts the response instead of ending it cleanly.
    """
    import asyncio

    from starlette.responses import Response, StreamingResponse

    scope, receive, finished = _one_request(scope, body)
    start: asyncio.Future = asyncio.get_running_loop().create_future()
    chunks: asyncio.Queue = asyncio.Queue()

    async def send(message: dict) -> None:
        if message["type"] == "http.response.start":
            if not start.done():
                start.set_result((message["status"], message.get("headers", [])))
        elif message["type"] == "http.response.body":
            chunks.put_nowait((message.get("body", b""), message.get("more_body", False)))

    async def run() -> None:
        try:
            await app(scope, receive, send)
        except BaseException as exc:
            if not start.done():
                start.set_exception(exc)
            chunks.put_nowait(exc)
            raise
        finally:
            finished.set()
            chunks.put_nowait(None)  # the app ended: no more chunks (whatever it sent)

    task = asyncio.get_running_loop().create_task(run())
    status, raw_headers = await start
    first = await chunks.get()
    if isinstance(first, BaseException):
        raise first
    content, more = first if first is not None else (b"", False)
    if not more:
        await asyncio.shield(task)
        response = Response(content, status_code=status)
        response.raw_headers = list(raw_headers)
        return response

    async def rest() -> Any:
        try:
            yield content
            while True:
                item = await chunks.get()
                if isinstance(item, BaseException):
                    raise item
                if item is None:
                    return
                yield item[0]
                if not item[1]:
                    return
        finally:  # read to the end, or closed because the client left: the app sees a disconnect and stops
            finished.set()
            if not task.done():
                task.cancel()

    streamed = StreamingResponse(rest(), status_code=status)
    streamed.raw_headers = [(k, v) for k, v in raw_headers if k.lower() != b"content-length"]
    return streamed


def text(status: int, message: str) -> HTTPResult:
    return status, [("content-type", "text/plain; charset=utf-8")], message.encode()


def not_found(path: str, listing: str, what: str, known: list[str]) -> HTTPResult:
    """404 in the words of Ray Serve's proxy (``Path '/x' not found. Ping http://.../-/routes ...``), then what there is.

    >>> not_found("/x", "-/routes", "routes", ["/a"])[2].decode()
    "Path '/x' not found. Ping http://.../-/routes for available routes. (servegraph: routes are /a)"
    """
    return text(404, f"Path '{path}' not found. Ping http://.../{listing} for available {what}. (servegraph: {what} are {', '.join(known) or 'none'})")


def encode_result(value: Any) -> HTTPResult:
    """str as text, bytes as they are, a starlette Response as it is, anything else as JSON."""
    if isinstance(value, str):
        return text(200, value)
    if isinstance(value, (bytes, bytearray, memoryview)):
        return 200, [("content-type", "application/octet-stream")], bytes(value)
    try:
        from starlette.responses import Response, StreamingResponse
    except ImportError:  # pragma: no cover - starlette is a dependency
        Response = StreamingResponse = ()  # type: ignore[misc,assignment]
    if isinstance(value, Response) and not isinstance(value, StreamingResponse):
        headers = [(k.decode("latin-1"), v.decode("latin-1")) for k, v in value.raw_headers]
        return value.status_code, headers, bytes(value.body)
    try:
        body = json.dumps(value).encode()
    except (TypeError, ValueError) as exc:
        return text(500, f"the result ({type(value).__name__}) is not JSON-serializable: {exc}; return str, bytes, a starlette Response or JSON data")
    return 200, [("content-type", "application/json")], body


def user_error(exc: BaseException) -> BaseException:
    """The user's exception inside Ray's wrappers (a RayTaskError carries it as ``.cause``)."""
    seen = 0
    while getattr(exc, "cause", None) is not None and seen < 10:
        exc, seen = exc.cause, seen + 1  # type: ignore[attr-defined]
    return exc


def encode_error(exc: BaseException) -> HTTPResult:
    """A user exception: a generic 500 naming the request id; the full error goes to this process's log under it.

    A public endpoint must not leak the error's text; set ``SERVEGRAPH_HTTP_ERROR_DETAILS=1``
    (development) to put the type and message in the body too.
    """
    exc = user_error(exc)
    if isinstance(exc, json.JSONDecodeError):
        return text(400, f"request body is not valid JSON: {exc}")
    request_id = current_request_id() or "unknown"
    print(f"servegraph: request {request_id} failed:", file=sys.stderr)
    traceback.print_exception(type(exc), exc, exc.__traceback__, file=sys.stderr)
    sys.stderr.flush()
    if os.environ.get(ERROR_DETAILS_ENV, "") not in ("", "0", "false", "False"):
        return text(500, f"{type(exc).__name__}: {exc} (request id {request_id})")
    return text(500, f"Internal Server Error (request id {request_id})")


def decode_json_body(body: bytes) -> Any:
    """The JSON body of a request, or None for an empty one; raises ValueError on bad JSON."""
    if not body.strip():
        return None
    return json.loads(body)
