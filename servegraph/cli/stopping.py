"""Ending what servegraph started: the Ray cluster behind ``run`` and ``deploy``, said in one line each.

A cluster servegraph started through its cluster host is stopped here (unless the user
asked to keep it); a cluster someone else started is never touched, and the message
says whose it is.
"""

from __future__ import annotations

import dataclasses
import time

from ..runtime.client.cluster_record import BY_SERVE_RUN, ClusterRecord, forget_record, pid_alive, save_record

#: How long ``shutdown`` waits for a foreground ``servegraph run`` to notice its applications are gone and end.
OWNER_GRACE_S = 30.0


def disconnect() -> None:
    """Leave the cluster before it stops, so this process's Ray client does not report the loss."""
    import ray

    if ray.is_initialized():
        ray.shutdown()


def stop_started_cluster(record: ClusterRecord, *, wait_for_owner: bool = True) -> str:
    """Stop a cluster servegraph started and forget it; returns the line that says so.

    Args:
        wait_for_owner: first give the foreground ``servegraph run`` the cluster ends with time to
            end on its own (it does once its applications are gone), so it leaves quietly.
    """
    from ..runtime.client.cluster_host import cluster_processes, stop_cluster

    disconnect()
    owner = record.owner_pid
    if wait_for_owner and owner is not None and pid_alive(owner):
        deadline = time.monotonic() + OWNER_GRACE_S
        while pid_alive(owner) and time.monotonic() < deadline:
            time.sleep(0.2)
    if not pid_alive(record.pid) and not cluster_processes(record):
        forget_record(record.address)
        return f"The Ray cluster at {record.address} ({record.describe()}) has stopped: the `{record.by}` that started it ended and stopped it."
    stopped = stop_cluster(record)
    line = f"Stopped the Ray cluster at {record.address} ({record.describe()}): {stopped.processes} process(es) ended."
    if stopped.survivors:
        line += f" Still running despite SIGKILL: pids {', '.join(map(str, stopped.survivors))}."
    return line


def keep_started_cluster(record: ClusterRecord) -> str:
    """Mark a started cluster as kept (no owner's end stops it); returns the line that says so."""
    save_record(dataclasses.replace(record, keep=True))
    return f"Kept the Ray cluster at {record.address} running (--keep-cluster); `servegraph shutdown` stops it."


def not_ours(address: str, source: str, record: ClusterRecord | None) -> str:
    """The line for a cluster this command leaves running: whose it is, and what stops it."""
    if record is not None and record.host:
        return f"The Ray cluster at {address} ({record.describe()}) keeps running; `servegraph shutdown` stops it."
    if record is not None and record.by == BY_SERVE_RUN:
        return f"The Ray cluster at {address} was started by serve.run in pid {record.pid}; it ends when that process does."
    return f"The Ray cluster at {address} ({source}) keeps running: servegraph did not start it."
