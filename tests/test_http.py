"""Real HTTP through the session's proxy: what each result type becomes, and each error's status.

Two applications for the whole module, each under its own route prefix and
none at ``/``, so an unknown path has no application.
"""

from __future__ import annotations

import httpx
import pytest
from starlette.requests import Request

import servegraph as serve
from servegraph import InputNode


@serve.deployment
class Responder:
    """An ingress that returns whatever type of result the query asks for."""

    async def __call__(self, request: Request):
        kind = request.query_params["kind"]
        if kind == "text":
            return "plain text"
        if kind == "bytes":
            return b"\x00\x01raw"
        if kind == "json":
            return {"answer": 42, "items": [1, 2], "path": request.url.path}
        if kind == "echo":
            return await request.json()
        if kind == "error":
            raise ValueError("the model is not loaded")
        return f"unknown kind {kind!r}"


@serve.deployment
class Scale:
    def __init__(self, factor: float):
        self.factor = factor

    def times(self, x: float) -> float:
        if x < 0:
            raise ValueError(f"x must be >= 0, got {x}")
        return x * self.factor


with InputNode() as inp:
    scaled = Scale.bind(2.0).times.bind(inp["x"])


@pytest.fixture(scope="module")
def base(deploy, http_port) -> str:
    deploy(Responder.bind(), name="http-ingress", route_prefix="/ingress")
    deploy(scaled, name="http-graph", route_prefix="/graph")
    return f"http://127.0.0.1:{http_port}"


def get(url: str, **kwargs) -> httpx.Response:
    return httpx.get(url, timeout=60, **kwargs)


def post(url: str, **kwargs) -> httpx.Response:
    return httpx.post(url, timeout=60, **kwargs)


def test_str_is_returned_as_text(base):
    reply = get(f"{base}/ingress", params={"kind": "text"})
    assert reply.status_code == 200
    assert reply.text == "plain text"
    assert reply.headers["content-type"].startswith("text/plain")


def test_bytes_are_returned_as_they_are(base):
    reply = get(f"{base}/ingress", params={"kind": "bytes"})
    assert reply.status_code == 200
    assert reply.content == b"\x00\x01raw"
    assert reply.headers["content-type"] == "application/octet-stream"


def test_dict_is_returned_as_json(base):
    reply = get(f"{base}/ingress/sub/path", params={"kind": "json"})
    assert reply.status_code == 200
    assert reply.headers["content-type"] == "application/json"
    assert reply.json() == {"answer": 42, "items": [1, 2], "path": "/ingress/sub/path"}


def test_request_body_reaches_the_ingress(base):
    reply = post(f"{base}/ingress", params={"kind": "echo"}, json={"a": [1, "two"]})
    assert reply.json() == {"a": [1, "two"]}


def test_user_exception_is_a_generic_500_naming_the_request_id(base):
    reply = get(f"{base}/ingress", params={"kind": "error"})
    assert reply.status_code == 500
    assert reply.text == f"Internal Server Error (request id {reply.headers['x-request-id']})"


def test_bad_json_read_by_the_ingress_is_a_400(base):
    reply = post(f"{base}/ingress", params={"kind": "echo"}, content=b"{not json")
    assert reply.status_code == 400
    assert "not valid JSON" in reply.text


def test_unknown_route_is_a_404(base):
    reply = get(f"{base}/nowhere")
    assert reply.status_code == 404
    assert "/graph" in reply.text and "/ingress" in reply.text  # the routes there are


def test_graph_takes_the_json_body_as_its_input(base):
    reply = post(f"{base}/graph", json={"x": 21})
    assert reply.status_code == 200
    assert reply.json() == 42.0


def test_graph_bad_json_is_a_400(base):
    reply = post(f"{base}/graph", content=b"{'x': 1}")
    assert reply.status_code == 400
    assert "request body is not valid JSON" in reply.text


def test_graph_missing_input_key_is_a_400(base):
    reply = post(f"{base}/graph", json={"y": 1})
    assert reply.status_code == 400
    assert "input['x']" in reply.text


def test_graph_user_exception_is_a_500(base):
    reply = post(f"{base}/graph", json={"x": -1})
    assert reply.status_code == 500
    assert reply.text == f"Internal Server Error (request id {reply.headers['x-request-id']})"


def test_deleted_application_stops_answering(base, serve_app, http_port):
    serve_app.run(Responder.bind(), name="short-lived", route_prefix="/short", port=http_port)
    assert get(f"{base}/short", params={"kind": "text"}).text == "plain text"
    serve_app.delete("short-lived")
    assert "short-lived" not in serve_app.status().applications
    assert get(f"{base}/short", params={"kind": "text"}).status_code == 404
