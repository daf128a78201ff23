"""``servegraph logs``: a replica's own output, read back through the CLI, on the session's cluster."""

from __future__ import annotations

import time

from click.testing import CliRunner

import servegraph as serve
from servegraph.cli import main


@serve.deployment(num_replicas=2)
class Chatty:
    def __init__(self):
        print("chatty replica started", flush=True)

    def __call__(self, word: str) -> str:
        print(f"chatty heard {word}", flush=True)
        return word


def logs(*args: str) -> str:
    result = CliRunner().invoke(main, ["logs", *args])
    assert result.exit_code == 0, result.output
    return result.output


def test_logs_show_each_replicas_output_prefixed_by_its_replica(deploy):
    import ray

    handle = deploy(Chatty.bind(), name="chatty")
    assert ray.get(handle.remote("papaya"), timeout=60) == "papaya"
    replicas = {r.replica_id for r in ray.get(serve.runtime.client.api._controller().status.remote()).applications["chatty"].deployments["Chatty"].replicas}
    deadline = time.monotonic() + 30  # Ray flushes worker output to its files asynchronously
    out = logs("chatty")
    while "chatty heard papaya" not in out and time.monotonic() < deadline:
        time.sleep(0.5)
        out = logs("chatty", "Chatty")
    assert "chatty heard papaya" in out
    assert sum(f"[Chatty#{rid}] chatty replica started" in out for rid in replicas) == 2
    assert out.count("chatty replica started") == 2  # once per replica, not once per log file
    assert ":job_id:" not in out and ":actor_name:" not in out  # Ray's marker lines are no one's output


def test_logs_of_an_unknown_application_or_deployment_say_what_runs(deploy):
    deploy(Chatty.bind(), name="chatty2")
    result = CliRunner().invoke(main, ["logs", "nope"])
    assert result.exit_code == 1 and "no application named 'nope'" in result.output
    result = CliRunner().invoke(main, ["logs", "chatty2", "Nope"])
    assert result.exit_code == 1 and "has no deployment 'Nope'; it has Chatty" in result.output
