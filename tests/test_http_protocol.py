"""The proxy's HTTP connections (runtime/actors/http_protocol.py): uvicorn's protocol with one write per
response and the client's departure told to the request. A real uvicorn server on 127.0.0.1, no Ray."""

from __future__ import annotations

import asyncio
import socket
import threading
import time

import pytest
import uvicorn
from ports import free_port

from servegraph.runtime.actors import http_protocol
from servegraph.runtime.actors.http_protocol import ON_DISCONNECT, _OneWrite


class _Transport:
    """What _OneWrite writes to: the writes it got, and whether it was closed or aborted."""

    def __init__(self) -> None:
        self.writes: list[bytes] = []
        self.closed = self.aborted = False

    def write(self, data: bytes) -> None:
        self.writes.append(data)

    def is_closing(self) -> bool:
        return self.closed or self.aborted

    def close(self) -> None:
        self.closed = True

    def abort(self) -> None:
        self.aborted = True

    def get_extra_info(self, name: str) -> str:
        return f"info:{name}"


def test_writes_in_one_loop_turn_leave_as_one_and_the_next_turn_writes_again():
    async def scenario() -> list[bytes]:
        transport = _Transport()
        one = _OneWrite(transport, asyncio.get_running_loop())  # type: ignore[arg-type]
        one.write(b"HTTP/1.1 200 OK\r\n\r\n")
        one.write(b"hello")
        assert transport.writes == []  # held until the turn ends
        await asyncio.sleep(0)
        await asyncio.sleep(0)
        one.write(b"chunk")
        await asyncio.sleep(0)
        await asyncio.sleep(0)
        assert one.get_extra_info("peername") == "info:peername"  # everything else is the transport's
        return transport.writes

    assert asyncio.run(scenario()) == [b"HTTP/1.1 200 OK\r\n\r\nhello", b"chunk"]


def test_close_sends_what_was_written_first_and_abort_drops_it():
    async def scenario() -> tuple[_Transport, _Transport]:
        loop = asyncio.get_running_loop()
        closed, aborted = _Transport(), _Transport()
        one = _OneWrite(closed, loop)  # type: ignore[arg-type]
        one.write(b"last words")
        one.close()
        other = _OneWrite(aborted, loop)  # type: ignore[arg-type]
        other.write(b"never sent")
        other.abort()
        await asyncio.sleep(0)
        await asyncio.sleep(0)
        return closed, aborted

    closed, aborted = asyncio.run(scenario())
    assert closed.writes == [b"last words"] and closed.closed
    assert aborted.writes == [] and aborted.aborted


@pytest.fixture
def server():
    """uvicorn with the proxy's protocol serving an app that answers /quick at once and holds /slow until its
    client leaves (then it records that the connection told it)."""
    told, entered = threading.Event(), threading.Event()
    scopes: list[dict] = []

    async def app(scope, receive, send):
        if scope["type"] != "http":
            return
        scopes.append(scope)
        while (await receive()).get("more_body"):
            pass
        if scope["path"] == "/slow":
            gone = asyncio.Event()
            scope[ON_DISCONNECT].callbacks.add(lambda: (told.set(), gone.set()))
            entered.set()
            await asyncio.wait_for(gone.wait(), 60)
            return
        body = b"quick answer"
        await send({"type": "http.response.start", "status": 200, "headers": [(b"content-length", str(len(body)).encode())]})
        await send({"type": "http.response.body", "body": body})

    protocol = http_protocol.protocol()
    assert protocol != "auto", "httptools is a dependency: the proxy's own protocol must be available"
    port = free_port()
    config = uvicorn.Config(app, host="127.0.0.1", port=port, http=protocol, lifespan="off", log_level="warning")
    instance = uvicorn.Server(config)
    thread = threading.Thread(target=instance.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not instance.started:
        assert time.monotonic() < deadline, "uvicorn did not start"
        time.sleep(0.02)
    yield port, told, entered, scopes
    instance.should_exit = True
    thread.join(30)


def _request(port: int, path: str) -> socket.socket:
    sock = socket.create_connection(("127.0.0.1", port), timeout=30)
    sock.sendall(f"GET {path} HTTP/1.1\r\nHost: x\r\n\r\n".encode())
    return sock


def test_an_answer_arrives_whole_with_keep_alive_over_real_http(server):
    port, _, _, scopes = server
    sock = _request(port, "/quick")
    try:
        for _ in range(2):  # the same connection twice: keep-alive works through the wrapper
            data = b""
            while not data.endswith(b"quick answer"):
                chunk = sock.recv(65536)
                assert chunk, f"connection closed early: {data!r}"
                data += chunk
            assert data.startswith(b"HTTP/1.1 200 OK\r\n") and b"content-length: 12" in data
            sock.sendall(b"GET /quick HTTP/1.1\r\nHost: x\r\n\r\n")
    finally:
        sock.close()
    assert all(ON_DISCONNECT in scope for scope in scopes)


def test_a_client_that_leaves_is_told_to_its_request_without_a_watcher(server):
    port, told, entered, _ = server
    sock = _request(port, "/slow")
    assert entered.wait(30)
    assert not told.is_set()
    sock.close()
    assert told.wait(30), "the connection's loss did not reach the request"
