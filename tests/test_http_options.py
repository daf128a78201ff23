"""http_options honoured or refused; request bodies, 413, request ids and generic 500s: on real sockets.

The proxy runs in-process here (uvicorn on a free 127.0.0.1 port) so each test
can give it its own options; the 500-body test goes through the session's real
proxy and replicas.
"""

from __future__ import annotations

import asyncio
import ssl
import subprocess

import httpx
import pytest
import yaml
from click.testing import CliRunner
from conftest import free_port

import servegraph as serve
from servegraph.cli import main
from servegraph.runtime.actors.proxy import HTTPProxy
from servegraph.runtime.common import http_codec


def serve_proxy(proxy: HTTPProxy, client_call):
    """Start ``proxy`` in this process, run ``client_call(base_url)`` against it, stop it; returns the call's result."""

    async def go():
        error = await proxy.start()
        assert error is None, error
        try:
            return await client_call()
        finally:
            proxy._server.should_exit = True
            await asyncio.sleep(0)

    return asyncio.run(go())


@pytest.fixture
def certificate(tmp_path):
    key, cert = tmp_path / "key.pem", tmp_path / "cert.pem"
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", str(key), "-out", str(cert),
         "-days", "1", "-subj", "/CN=127.0.0.1", "-addext", "subjectAltName=IP:127.0.0.1"],
        check=True,
        capture_output=True,
    )
    return str(key), str(cert)


def test_the_proxy_serves_https_with_ssl_keyfile_and_certfile(certificate):
    key, cert = certificate
    port = free_port()
    proxy = HTTPProxy("127.0.0.1", port, {"ssl_keyfile": key, "ssl_certfile": cert})

    async def call():
        async with httpx.AsyncClient(verify=ssl.create_default_context(cafile=cert)) as client:
            secure = await client.get(f"https://127.0.0.1:{port}/nothing")
        async with httpx.AsyncClient() as client:
            with pytest.raises(httpx.HTTPError):
                await client.get(f"http://127.0.0.1:{port}/nothing")
        return secure

    reply = serve_proxy(proxy, call)
    assert reply.status_code == 404  # TLS handshake done with our certificate; no routes installed


def test_healthz_says_success_once_a_route_arrived_also_after_every_application_went():
    """As Ray Serve's proxy: "Route table is not populated yet." (503) until a route table with a route in it
    arrives; from then on "success", also once every application is deleted (the table is empty again)."""
    port = free_port()
    proxy = HTTPProxy("127.0.0.1", port)

    async def call():
        async with httpx.AsyncClient() as client:
            health = f"http://127.0.0.1:{port}/-/healthz"
            before = await client.get(health)
            await proxy.set_routes({"/x": ("deployment", "app", object(), None)}, [])
            routed = await client.get(health)
            await proxy.set_routes({}, [])
            emptied = await client.get(health)
        return [(r.status_code, r.text) for r in (before, routed, emptied)]

    assert serve_proxy(proxy, call) == [(503, "Route table is not populated yet."), (200, "success"), (200, "success")]


class _SlowProxy(HTTPProxy):
    async def _handle(self, scope, body, seen=None):
        await asyncio.sleep(30)
        return http_codec.text(200, "too late")


def test_request_timeout_s_answers_408():
    port = free_port()
    reply = serve_proxy(
        _SlowProxy("127.0.0.1", port, {"request_timeout_s": 0.5}),
        lambda: httpx.AsyncClient().get(f"http://127.0.0.1:{port}/"),
    )
    assert reply.status_code == 408
    assert "http_options.request_timeout_s" in reply.text


class _EchoProxy(HTTPProxy):
    async def _handle(self, scope, body, seen=None):
        return 200, [("content-type", "application/octet-stream")], body


def test_bodies_arrive_whole_and_past_the_limit_are_413(monkeypatch):
    monkeypatch.setenv("SERVEGRAPH_MAX_REQUEST_BODY_BYTES", str(1024 * 1024))
    port = free_port()
    big = bytes(range(256)) * 4096  # exactly 1 MiB: at the limit

    async def chunks(data: bytes, size: int):
        for i in range(0, len(data), size):
            yield data[i : i + size]

    async def call():
        async with httpx.AsyncClient() as client:
            whole = await client.post(f"http://127.0.0.1:{port}/", content=chunks(big, 65536))  # chunked, no length
            too_big = await client.post(f"http://127.0.0.1:{port}/", content=big + b"x")
            streamed_too_big = await client.post(f"http://127.0.0.1:{port}/", content=chunks(big + b"x", 65536))
        return whole, too_big, streamed_too_big

    whole, too_big, streamed_too_big = serve_proxy(_EchoProxy("127.0.0.1", port), call)
    assert whole.status_code == 200 and whole.content == big
    assert too_big.status_code == 413 and streamed_too_big.status_code == 413
    assert "larger than 1048576 bytes" in too_big.text


def test_unknown_http_options_are_refused_by_the_proxy():
    with pytest.raises(ValueError, match="cannot apply http_options"):
        HTTPProxy("127.0.0.1", 1, {"root_path": "/x"})


def test_deploy_refuses_root_path_which_the_proxy_does_not_apply(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    path = tmp_path / "root.yaml"
    result = CliRunner().invoke(main, ["build", "hello:language_classifier", "-o", str(path)])
    assert result.exit_code == 0, result.output
    config = yaml.safe_load(path.read_text())
    config["http_options"]["root_path"] = "/behind-a-proxy"
    path.write_text(yaml.safe_dump(config))
    result = CliRunner().invoke(main, ["deploy", str(path)])
    assert result.exit_code == 1
    assert "http_options.root_path: servegraph deploy does not apply this yet" in result.output


def test_deploy_hands_tls_and_timeouts_to_the_proxy(tmp_path, monkeypatch, certificate):
    """What `servegraph deploy` gives the controller for the proxy: the config's TLS files and timeouts."""
    from servegraph.cli.ops import _applied_http_options
    from servegraph.compiler.config.loading import load_config

    monkeypatch.chdir(tmp_path)
    path = tmp_path / "tls.yaml"
    assert CliRunner().invoke(main, ["build", "hello:language_classifier", "-o", str(path)]).exit_code == 0
    config = yaml.safe_load(path.read_text())
    config["http_options"].update(ssl_keyfile=certificate[0], ssl_certfile=certificate[1], request_timeout_s=5)
    path.write_text(yaml.safe_dump(config))
    options = _applied_http_options(load_config(str(path)))
    assert (options["ssl_keyfile"], options["ssl_certfile"], options["request_timeout_s"]) == (*certificate, 5)
    HTTPProxy("127.0.0.1", free_port(), options)  # every one of them is an option the proxy applies


def test_encode_error_is_generic_logs_under_the_request_id_and_shows_details_when_asked(capsys, monkeypatch):
    http_codec.set_request_id("req-42")
    status, _, body = http_codec.encode_error(KeyError("language"))
    assert (status, body) == (500, b"Internal Server Error (request id req-42)")
    err = capsys.readouterr().err
    assert "servegraph: request req-42 failed:" in err and "KeyError: 'language'" in err
    monkeypatch.setenv(http_codec.ERROR_DETAILS_ENV, "1")
    _, _, body = http_codec.encode_error(KeyError("language"))
    assert body == b"KeyError: 'language' (request id req-42)"


@serve.deployment
class Broken:
    async def __call__(self, request) -> str:
        return (await request.json())["language"]


@pytest.mark.ray
def test_a_user_error_over_http_is_a_generic_500_with_the_request_id(deploy, http_port):
    deploy(Broken.bind(), name="broken", route_prefix="/broken")
    reply = httpx.post(f"http://127.0.0.1:{http_port}/broken", json={"name": "Dora"}, timeout=60)
    assert reply.status_code == 500
    request_id = reply.headers["x-request-id"]
    assert reply.text == f"Internal Server Error (request id {request_id})"
    assert "KeyError" not in reply.text
    mine = httpx.post(f"http://127.0.0.1:{http_port}/broken", json={}, headers={"X-Request-ID": "abc123"}, timeout=60)
    assert mine.headers["x-request-id"] == "abc123" and "request id abc123" in mine.text
