"""``serve.start`` sets the proxy's options for later ``serve.run`` calls, as in Ray Serve; what it cannot honour it refuses."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap

import pytest
from conftest import ROOT, free_port
from support import user_env

import servegraph as serve

SCRIPT = textwrap.dedent("""
    import json, sys, time
    import httpx, ray
    import servegraph as serve

    @serve.deployment
    class Slow:
        def __call__(self, request):
            time.sleep(float(request.query_params.get("s", "0")))
            return "done"

    port = int(sys.argv[1])
    ray.init(address="local", num_cpus=4, include_dashboard=False)
    serve.start(http_options={"port": port, "request_timeout_s": 2})
    serve.run(Slow.bind(), route_prefix="/slow")   # names no host or port: the running proxy's
    fast = httpx.get(f"http://127.0.0.1:{port}/slow", timeout=60)
    slow = httpx.get(f"http://127.0.0.1:{port}/slow?s=4", timeout=60)
    print(json.dumps({"fast": [fast.status_code, fast.text], "slow": slow.status_code,
                      "proxy": serve.status().proxy if hasattr(serve.status(), "proxy") else None}))
    serve.shutdown()
    ray.shutdown()
""")


@pytest.mark.ray  # a cluster of its own, in a child process
def test_serve_run_serves_where_serve_start_put_the_proxy(tmp_path):
    port = free_port()
    result = subprocess.run(
        [sys.executable, "-c", SCRIPT, str(port)], capture_output=True, text=True, timeout=240,
        env=user_env(tmp_path), cwd=ROOT,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    out = json.loads(result.stdout.strip().splitlines()[-1])
    assert out["fast"] == [200, "done"]
    assert out["slow"] == 408  # request_timeout_s from serve.start applies to the app serve.run deployed


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"grpc_options": {"port": 9000, "grpc_servicer_functions": "m.add_f"}}, r"must be a list of import paths"),
        ({"unknown_thing": 1}, r"serve.start\(\) got unknown_thing"),
        ({"http_options": {"root_path": "/x"}}, r"got root_path, which servegraph's proxy cannot apply"),
    ],
)
def test_serve_start_refuses_what_it_cannot_honour(kwargs, message):
    with pytest.raises(TypeError, match=message):
        serve.start(**kwargs)


def test_serve_start_checks_its_logging_config_before_anything_starts():
    with pytest.raises(serve.OptionValueError, match=r"logging_config.encoding: input should be 'TEXT' or 'JSON', got 'XML'"):
        serve.start(logging_config={"encoding": "XML"})
