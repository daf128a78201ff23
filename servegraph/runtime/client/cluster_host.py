"""The process that owns a Ray cluster servegraph starts, so that servegraph can also stop it.

``servegraph run`` and ``servegraph deploy``, with no cluster named, start one of these
(``python -m servegraph.runtime.client.cluster_host``) in a session of its own, away from the
terminal's Ctrl-C. It starts a new local cluster with ``ray.init`` (as ``serve run`` does:
Ray's token authentication on, and nothing written to Ray's ``ray_current_cluster`` file,
so no later ``ray.init()`` on the machine joins it by accident), records it (see
:mod:`.cluster_record`) and waits. It ends its cluster with ``ray.shutdown()``, which stops
every Ray process the cluster started, when

- it gets SIGTERM (``servegraph shutdown``, see :func:`stop_cluster`), or
- its owner ends (the foreground ``servegraph run`` that asked for it), unless the user asked
  to keep the cluster.

Killed outright, it leaves the rest to Ray's reaper, which stops its process group.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import logging
import os
import selectors
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

from .. import ray_compat
from ..common.records import NAMESPACE
from .cluster_record import ClusterRecord, forget_record, host_log_path, pid_alive, read_record, save_record

#: How often the host looks at its owner and the record.
_WATCH_EVERY_S = 0.5
#: How long a stopped cluster's processes get to end after SIGTERM before SIGKILL.
_GRACE_S = 10.0


#: Cluster hosts this process started (kept so that Python does not warn they still run when it exits).
_HOSTS: list[subprocess.Popen] = []


class ClusterStartError(RuntimeError):
    """The cluster host could not start a cluster; the message says why (Ray's last words)."""


# -- the host process itself ------------------------------------------------------------------------


def _serve(by: str, owner_pid: int | None) -> int:
    import ray

    # Whatever Ray prints goes to the host's log; the starter reads one line, on a descriptor of its own.
    ready = os.dup(sys.stdout.fileno())
    os.dup2(sys.stderr.fileno(), sys.stdout.fileno())
    _start_ray(ray)
    # After ray.init, whose core worker installs its own SIGTERM handler (it dumps a stack and dies).
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
        signal.signal(sig, lambda *_: stop.set())
    address = ray.get_runtime_context().gcs_address
    record = ClusterRecord(
        address=address,
        by=by,
        pid=os.getpid(),
        session_dir=ray_compat.session_dir(),
        token_path=ray_compat.token_path_in_use(),
        host=True,
        owner_pid=owner_pid,
    )
    save_record(record)
    try:
        os.write(ready, json.dumps(dataclasses.asdict(record)).encode() + b"\n")
        os.close(ready)
    except OSError:  # the starter gave up waiting: nobody will use this cluster
        stop.set()
    while not stop.wait(_WATCH_EVERY_S):
        if owner_pid is not None and not pid_alive(owner_pid) and not _kept(address):
            break
    ray.shutdown()
    forget_record(address)
    clear_ray_address_file(address)
    return 0


def _start_ray(ray: Any) -> None:
    """``ray.init()`` of a new local cluster, tried twice: on a machine whose cores are all busy Ray can give up
    on the raylet it started before it registers (after a fixed 30 s; see ray_compat.NODE_START_TIMEOUT). What
    the first try started (every process below this one: the host starts nothing else) is stopped first."""
    options: dict[str, Any] = {
        "address": "local", "namespace": NAMESPACE, "include_dashboard": False,
        "logging_level": logging.WARNING, "log_to_driver": False,
    }  # fmt: skip
    try:
        ray.init(**options)
    except Exception as exc:
        if not ray_compat.node_start_timed_out(exc):
            raise
        print(f"servegraph: {exc} Stopping what it started and starting once more.", file=sys.stderr, flush=True)
        _stop_descendants()
        ray.init(**options)


def _stop_descendants(timeout: float = 10.0) -> None:
    """SIGKILL every process below this one (read from /proc; elsewhere nothing is done) and wait for them to go."""
    parents: dict[int, int] = {}
    for entry in Path("/proc").glob("[0-9]*"):
        try:
            parents[int(entry.name)] = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
        except (OSError, ValueError, IndexError):
            continue
    mine, frontier = set(), {os.getpid()}
    while frontier:
        frontier = {pid for pid, ppid in parents.items() if ppid in frontier and pid not in mine}
        mine |= frontier
    for pid in mine:
        try:
            os.kill(pid, signal.SIGKILL)
        except OSError:
            pass
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with contextlib.suppress(ChildProcessError):
            while os.waitpid(-1, os.WNOHANG)[0] > 0:  # reap this process's own children
                pass
        if not any(pid_alive(pid) for pid in mine):
            return
        time.sleep(0.1)


def _kept(address: str) -> bool:
    record = read_record()
    return record is not None and record.address == address and record.keep


def clear_ray_address_file(address: str) -> None:
    """Remove Ray's ``ray_current_cluster`` file if it names ``address`` (a cluster servegraph ends)."""
    path = ray_compat.ray_address_file()
    try:
        if path.read_text(encoding="utf-8").strip() == address:
            path.unlink()
    except OSError:
        pass


# -- starting and stopping one, from another process -----------------------------------------------


def start_cluster(by: str, owner_pid: int | None = None, timeout: float = 180.0) -> ClusterRecord:
    """Start a cluster host and wait until its cluster is up; its record is written by then.

    Raises:
        ClusterStartError: the host ended, or said nothing within ``timeout`` seconds.
    """
    log_path = host_log_path()
    log_path.parent.mkdir(parents=True, exist_ok=True)
    command = [sys.executable, "-m", "servegraph.runtime.client.cluster_host", "--by", by]
    if owner_pid is not None:
        command += ["--owner-pid", str(owner_pid)]
    # One run's worth of Ray's start-up lines is all anyone reads: start afresh once the log passes 1 MiB.
    mode = "wb" if log_path.exists() and log_path.stat().st_size > 1 << 20 else "ab"
    with open(log_path, mode) as log:
        log.write(f"--- {time.strftime('%Y-%m-%d %H:%M:%S')} {by}: starting a Ray cluster\n".encode())
        log.flush()
        host = subprocess.Popen(
            command, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=log, start_new_session=True, close_fds=True
        )
    _HOSTS.append(host)  # it outlives this call (and usually this process): no "still running" warning
    assert host.stdout is not None
    line = b""
    try:
        with selectors.DefaultSelector() as selector:
            selector.register(host.stdout, selectors.EVENT_READ)
            deadline = time.monotonic() + timeout
            while not line.endswith(b"\n"):
                left = deadline - time.monotonic()
                if left <= 0 or not selector.select(left):
                    raise ClusterStartError(f"Ray did not start within {timeout:g}s{_last_words(log_path)}")
                chunk = os.read(host.stdout.fileno(), 4096)
                if not chunk:
                    host.wait()
                    raise ClusterStartError(f"Ray did not start{_last_words(log_path)}")
                line += chunk
    except BaseException:  # given up on, or Ctrl-C: no half-started cluster stays behind
        _end_all({host.pid}, grace=_GRACE_S)
        raise
    finally:
        host.stdout.close()
    return ClusterRecord(**json.loads(line))


def _last_words(log_path: Path) -> str:
    """``: <the host log's last line> (full log: PATH)``, for a start that failed."""
    try:
        lines = [ln for ln in log_path.read_text(encoding="utf-8", errors="replace").splitlines() if ln.strip()]
    except OSError:
        return ""
    last = lines[-1].strip() if lines else ""
    return f": {last} (full log: {log_path})" if last else f" (log: {log_path})"


@dataclasses.dataclass(frozen=True)
class Stopped:
    """What :func:`stop_cluster` ended."""

    address: str
    #: Processes of the cluster that were running when it was asked to stop (the host, Ray's, the workers).
    processes: int
    #: Processes still there after every signal (none, unless the machine refuses).
    survivors: tuple[int, ...] = ()


def is_cluster_host(pid: int) -> bool:
    """Whether ``pid`` is a servegraph cluster host (and not a process that has since taken its number)."""
    try:
        return b"servegraph.runtime.client.cluster_host" in Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return False


def cluster_processes(record: ClusterRecord) -> set[int]:
    """The live processes of a cluster servegraph started (Linux ``/proc``; empty elsewhere).

    Found by what ties them to it, never by name: the host's process group (Ray's own processes),
    every process naming the cluster's session directory, and their children (workers each get a
    process group of their own, and a title such as ``ray::IDLE``).
    """
    parents: dict[int, int] = {}
    found = set()
    host = is_cluster_host(record.pid)  # its group is the cluster's only while it is the host (pids are reused)
    marker = record.session_dir.encode() if record.session_dir else None
    for entry in os.listdir("/proc") if os.path.isdir("/proc") else ():
        if not entry.isdigit():
            continue
        try:
            fields = Path(f"/proc/{entry}/stat").read_text().rsplit(")", 1)[1].split()  # state, ppid, pgrp, ...
            if fields[0] == "Z":
                continue
            pid = int(entry)
            parents[pid] = int(fields[1])
            if (host and int(fields[2]) == record.pid) or (marker and marker in Path(f"/proc/{entry}/cmdline").read_bytes()):
                found.add(pid)
        except (OSError, IndexError, ValueError):
            continue
    grown = True
    while grown:
        children = {pid for pid, parent in parents.items() if parent in found} - found
        found |= children
        grown = bool(children)
    return found


def stop_cluster(record: ClusterRecord, timeout: float = 60.0) -> Stopped:
    """Stop a cluster servegraph's host started (``record.host``), and forget it.

    The host is asked first (SIGTERM: it calls ``ray.shutdown()``); what is left of the cluster
    after ``timeout`` seconds (found by process group and session directory, never by name) gets
    SIGTERM, then SIGKILL.
    """
    if not record.host:
        raise ValueError(f"the Ray cluster at {record.address} was not started by a servegraph cluster host")
    before = _started(cluster_processes(record))
    if pid_alive(record.pid) and is_cluster_host(record.pid):
        os.kill(record.pid, signal.SIGTERM)
        _wait_gone({record.pid}, time.monotonic() + timeout)
    left = {pid for pid, started in before.items() if _started({pid}).get(pid) == started} | cluster_processes(record)
    survivors = _end_all(left, grace=_GRACE_S) if left else set()
    forget_record(record.address)
    clear_ray_address_file(record.address)
    return Stopped(record.address, len(before), tuple(sorted(survivors)))


def _started(pids: set[int]) -> dict[int, str]:
    """Each live process's start time (``/proc/PID/stat``), to tell it from a later one given the same pid."""
    out = {}
    for pid in pids:
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        except (OSError, IndexError):
            continue
        if fields[0] != "Z":
            out[pid] = fields[19]
    return out


def _alive(pids: set[int]) -> set[int]:
    return {pid for pid in pids if pid_alive(pid)}


def _wait_gone(pids: set[int], deadline: float) -> set[int]:
    while True:
        alive = _alive(pids)
        if not alive or time.monotonic() >= deadline:
            return alive
        time.sleep(0.2)


def _end_all(pids: set[int], grace: float) -> set[int]:
    for sig in (signal.SIGTERM, signal.SIGKILL):
        for pid in _alive(pids):
            try:
                os.kill(pid, sig)
            except OSError:
                pass
        pids = _wait_gone(pids, time.monotonic() + grace)
        if not pids:
            break
    return pids


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m servegraph.runtime.client.cluster_host", description=__doc__.splitlines()[0])
    parser.add_argument("--by", required=True, help="who asked for the cluster (servegraph run, servegraph deploy)")
    parser.add_argument("--owner-pid", type=int, default=None, help="end the cluster when this process ends")
    args = parser.parse_args(argv)
    return _serve(args.by, args.owner_pid)


if __name__ == "__main__":
    sys.exit(main())
