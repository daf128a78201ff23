"""A program that uses servegraph and then stops it one way or another: run by test_lifecycle.py as a child.

``python lifecycle_child.py MODE`` connects to the cluster at ``$LIFECYCLE_CLUSTER`` if that is set (the
test's, shared by the modes that leave their cluster up), else starts a Ray cluster of its own (``ray.init``
here starts its head as this process's children); it serves an InputNode graph that runs on compiled lanes,
and then:

- ``shutdown``: ``serve.shutdown()``, goes on working a few seconds, prints servegraph's threads, ends.
- ``delete``: ``serve.delete(app)``, goes on working a few seconds, prints servegraph's threads, ends.
- ``deploy-forever``: deploys a deployment whose constructor never returns (the test sends Ctrl-C).
- ``cluster-gone``: kills the head processes of its cluster (its own children), goes on, ends.

Each line it prints starts with a word the test looks for; the test only asserts how it ended.
"""

from __future__ import annotations

import os
import signal
import sys
import threading
import time

import ray

import servegraph as serve
from servegraph import InputNode
from servegraph.runtime.data.lanes import lanes_for

APP = "life"


@serve.deployment
class Add:
    def __init__(self, k: int):
        self.k = k

    def __call__(self, x: int) -> int:
        return x + self.k


@serve.deployment
class NeverReady:
    def __init__(self) -> None:
        time.sleep(3600)

    def __call__(self, x: int) -> int:
        return x


def say(*words: object) -> None:
    print(*words, flush=True)


def servegraph_threads() -> list[str]:
    return sorted(t.name for t in threading.enumerate() if t.name.startswith("servegraph") and t.is_alive())


def start_cluster() -> None:
    address = os.environ.get("LIFECYCLE_CLUSTER")
    if address:
        ray.init(address=address, namespace="servegraph", log_to_driver=False)
    else:
        ray.init(address="local", num_cpus=4, include_dashboard=False, namespace="servegraph", log_to_driver=False)


def serve_on_lanes() -> None:
    """Serve a two-stage InputNode graph and call it until this process holds a compiled lane."""
    with InputNode() as inp:
        graph = Add.options(name="S1").bind(1).__call__.bind(Add.options(name="S2").bind(2).__call__.bind(inp))
    serve.run(graph, name=APP, route_prefix=None, http=False)
    handle = serve.get_app_handle(APP)
    lanes = lanes_for(APP)
    deadline = time.monotonic() + 60
    while lanes.active() == 0 and time.monotonic() < deadline:
        handle.remote(1).result(timeout_s=60)
        time.sleep(0.05)
    say("lanes", lanes.active(), handle.remote(1).result(timeout_s=60))


def go_on(seconds: float = 3.0) -> None:
    """Keep working (without servegraph) for a while, as a notebook or a test suite would."""
    end = time.monotonic() + seconds
    total = 0
    while time.monotonic() < end:
        total += sum(range(1000))
        time.sleep(0.01)


def head_processes() -> list[int]:
    """Pids of the cluster's head processes this process started (its GCS and raylet)."""
    import psutil  # Ray ships it; importable once ray is

    return [
        p.pid
        for p in psutil.Process().children(recursive=True)
        if any(name in " ".join(p.cmdline()) for name in ("gcs_server", "raylet"))
    ]


def main(mode: str) -> None:
    start_cluster()
    if mode == "deploy-forever":
        say("deploying")
        serve.run(NeverReady.bind(), name=APP, route_prefix=None, http=False)
        say("deployed")  # never: the test interrupts the deploy
        return
    serve_on_lanes()
    if mode == "shutdown":
        serve.shutdown()
    elif mode == "delete":
        serve.delete(APP)
    elif mode == "cluster-gone":
        heads = head_processes()
        say("killing", len(heads))
        for pid in heads:
            os.kill(pid, signal.SIGKILL)
    else:
        raise SystemExit(f"unknown mode {mode!r}")
    go_on()
    say("threads", ",".join(servegraph_threads()) or "-")
    say("exiting")


if __name__ == "__main__":
    main(sys.argv[1])
