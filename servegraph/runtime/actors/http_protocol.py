"""The proxy's HTTP/1.1 connections: uvicorn's httptools protocol with two costs of a request taken out.

- **One write per response.** uvicorn writes a response's status line and headers, then its body: two
  ``send`` calls, and on loopback two TCP segments the client reads apart. :class:`_OneWrite` gives the
  protocol a transport that joins what is written in one loop turn into one write (an unstreamed answer is
  always written in one turn; a stream's chunks still leave as they come, one turn each).
- **No watcher task per request.** To cancel a request whose client left, an ASGI app must keep a task
  awaiting ``receive()`` until the answer is sent. This protocol tells the request itself instead: the
  scope carries :data:`ON_DISCONNECT`, a :class:`Departure` the app adds a callback to, and the connection's
  loss calls it.

Built on uvicorn's ``HttpToolsProtocol`` (every HTTP detail, keep-alive, pipelining, ``Expect:
100-continue``, TLS, flow control and shutdown stay uvicorn's). Where httptools is missing, or a uvicorn
whose protocol lacks what this uses, :func:`protocol` says ``"auto"`` and uvicorn serves as it would
anyway (the app then watches ``receive()``, see proxy._ClientWatch).
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

#: The scope key of the connection's :class:`Departure`: what to call if the client disconnects before its
#: answer is sent.
ON_DISCONNECT = "servegraph.on_disconnect"


class Departure:
    """One connection's news of its client leaving: callbacks added by the request being answered, called
    when the connection is lost; ``left`` once it is (a callback added later is the caller's to act on)."""

    __slots__ = ("callbacks", "left")

    def __init__(self) -> None:
        self.callbacks: set[Callable[[], None]] = set()
        self.left = False

    def lost(self) -> None:
        self.left = True
        callbacks = list(self.callbacks)
        self.callbacks.clear()
        for callback in callbacks:
            callback()


class _OneWrite:
    """A transport whose writes within one loop turn leave as one (see the module docstring); all else is the
    wrapped transport's."""

    __slots__ = ("_transport", "_loop", "_held")

    def __init__(self, transport: asyncio.Transport, loop: asyncio.AbstractEventLoop):
        self._transport = transport
        self._loop = loop
        self._held: list[bytes] | None = None

    def write(self, data: bytes) -> None:
        held = self._held
        if held is None:
            self._held = [data]
            self._loop.call_soon(self._flush)
        else:
            held.append(data)

    def writelines(self, lines: Any) -> None:
        for data in lines:
            self.write(data)

    def _flush(self) -> None:
        held, self._held = self._held, None
        if held and not self._transport.is_closing():
            self._transport.write(held[0] if len(held) == 1 else b"".join(held))

    def close(self) -> None:
        self._flush()  # what was written goes before the connection closes
        self._transport.close()

    def write_eof(self) -> None:
        self._flush()
        self._transport.write_eof()

    def abort(self) -> None:
        self._held = None
        self._transport.abort()

    def __getattr__(self, name: str) -> Any:
        return getattr(self._transport, name)


def protocol() -> Any:
    """The protocol class for ``uvicorn.Config(http=...)``: this module's, or ``"auto"`` where it cannot be built."""
    try:
        from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol
    except ImportError:  # no httptools: uvicorn picks h11 itself
        return "auto"
    if not all(hasattr(HttpToolsProtocol, name) for name in ("connection_made", "connection_lost", "on_headers_complete")):
        return "auto"

    class OneWriteProtocol(HttpToolsProtocol):
        """uvicorn's httptools protocol with one write per response and disconnects told to the request."""

        def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
            self._servegraph_departure = Departure()
            super().connection_made(_OneWrite(transport, self.loop))  # type: ignore[arg-type]  # a Transport by its methods

        def on_headers_complete(self) -> None:
            scope: Any = self.scope  # an ASGI scope; this key is servegraph's own
            if scope is not None:  # the dict the request's cycle gets (its task starts in a later turn)
                scope[ON_DISCONNECT] = self._servegraph_departure
            super().on_headers_complete()

        def connection_lost(self, exc: Exception | None) -> None:
            super().connection_lost(exc)
            self._servegraph_departure.lost()

    return OneWriteProtocol
