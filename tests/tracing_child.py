"""A program that serves the hello graph with SERVEGRAPH_TRACING=console on a cluster of its own, sends one
traced HTTP request and prints the spans of that request as JSON (tests/test_tracing.py runs it)."""

from __future__ import annotations

import glob
import json
import os
import sys
import time
import urllib.request

import ray

import servegraph as serve

EXAMPLES = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "examples")
sys.path.insert(0, EXAMPLES)

from hello import FrenchResponder, LanguageClassifier, SpanishResponder  # noqa: E402
from pipeline import app as pipeline  # noqa: E402
from ports import free_port  # noqa: E402

from servegraph.runtime import ray_compat  # noqa: E402

#: The client's own span, in W3C form: the proxy's span must be its child.
CLIENT_TRACE = "4bf92f3577b34da6a3ce929d0e0e4736"
CLIENT_SPAN = "00f067aa0ba902b7"


def post(port: int, path: str, body: dict, request_id: str, traceparent: str) -> str:
    headers = {"x-request-id": request_id}
    if traceparent:
        headers["traceparent"] = traceparent
    request = urllib.request.Request(f"http://127.0.0.1:{port}{path}", data=json.dumps(body).encode(), headers=headers, method="POST")
    return urllib.request.urlopen(request, timeout=60).read().decode()


def main() -> None:
    # The cluster's processes inherit this environment: the examples are found without a job runtime_env.
    os.environ["PYTHONPATH"] = EXAMPLES + os.pathsep + os.environ.get("PYTHONPATH", "")
    ray.init(address="local", num_cpus=4, include_dashboard=False, log_to_driver=False)
    port = free_port()
    serve.run(LanguageClassifier.bind(SpanishResponder.bind(), FrenchResponder.bind()), port=port)
    serve.run(pipeline, name="pipeline", route_prefix="/pipeline", port=port)
    answers = {
        "hello": post(port, "/", {"language": "spanish", "name": "Dora"}, "traced-hello", f"00-{CLIENT_TRACE}-{CLIENT_SPAN}-01"),
        "pipeline": post(port, "/pipeline", {"text": "Hello World"}, "traced-pipeline", ""),
    }
    logs = ray_compat.logs_dir()
    assert logs is not None
    spans: list[dict] = []
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        spans = []
        for path in glob.glob(os.path.join(logs, "serve", "spans", "*_tracing.json")):
            with open(path) as f:
                spans += [json.loads(line) for line in f if line.strip()]
        ids = [s.get("attributes", {}).get("servegraph.request_id") for s in spans]
        if ids.count("traced-hello") >= 3 and ids.count("traced-pipeline") >= 5:
            break
        time.sleep(0.5)
    by_request = {
        request_id: [s for s in spans if s.get("attributes", {}).get("servegraph.request_id") == request_id]
        for request_id in ("traced-hello", "traced-pipeline")
    }
    print(json.dumps({"answers": answers, "spans": by_request}))
    serve.shutdown()
    ray.shutdown()


if __name__ == "__main__":
    main()
