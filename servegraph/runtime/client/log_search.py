"""Every line one request left in the replicas' (and proxies') logs, on every node: ``servegraph logs --request-id``.

Replica logs (see :mod:`.replica_logging`) are files on the node each replica runs on, so the search
runs there: one Ray task pinned to each alive node reads that node's serve log directories and returns
the lines of the request, which the caller merges in time order. A line of a request is a TEXT record whose
request id field is it (with the traceback lines that follow it), or a JSON line whose ``request_id`` is it.
"""

from __future__ import annotations

import dataclasses
import glob
import json
import os
import re
import time
from collections.abc import Iterable, Iterator
from typing import Any

from ..actors.replica_logging import default_logs_dir

#: A TEXT record's first line: ``LEVEL yyyy-mm-dd hh:mm:ss,mmm <app>_<deployment> <replica> [<request id>] ...``.
_TEXT_RECORD = re.compile(
    r"^[A-Z]+ (?P<asctime>\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3}) (?P<component>\S+) (?P<replica>\S+) (?P<rest>.*)$"
)
#: How long each node's search may take before the caller gives up on that node (seconds).
NODE_TIMEOUT_S = 60.0


@dataclasses.dataclass(frozen=True, order=True)
class LogLine:
    """One line of a request's log: sorted by time, then by where it was read (file, line)."""

    timestamp_ns: int
    file: str
    index: int
    #: The replica's id, and what the line says of its deployment (TEXT: ``<app>_<deployment>``).
    replica: str = dataclasses.field(compare=False)
    deployment: str = dataclasses.field(compare=False)
    text: str = dataclasses.field(compare=False)


def _asctime_ns(asctime: str) -> int:
    """``logging``'s default asctime (local time, milliseconds) as nanoseconds since the epoch."""
    seconds, _, millis = asctime.partition(",")
    return int((time.mktime(time.strptime(seconds, "%Y-%m-%d %H:%M:%S")) * 1000 + int(millis or 0)) * 1_000_000)


def request_lines(lines: Iterable[str], request_id: str, file: str = "") -> Iterator[LogLine]:
    """The lines of one replica log (TEXT or JSON, mixed: a logging_config may change) that belong to the request.

    >>> log = ["INFO 2026-01-02 10:00:00,000 default_Model ab12 r1 -- hello", "Traceback (most recent call last):",
    ...        "INFO 2026-01-02 10:00:00,001 default_Model ab12 r2 -- other"]
    >>> [line.text for line in request_lines(log, "r1")]
    ['INFO 2026-01-02 10:00:00,000 default_Model ab12 r1 -- hello', 'Traceback (most recent call last):']
    """
    current: LogLine | None = None  # the TEXT record being read, if it is the request's
    for index, line in enumerate(lines):
        line = line.rstrip("\n")
        if line.startswith("{"):
            current = None
            if request_id not in line:
                continue
            try:
                record = json.loads(line)
            except ValueError:
                continue
            if isinstance(record, dict) and record.get("request_id") == request_id:
                stamp = record.get("timestamp_ns")
                if not isinstance(stamp, int):
                    stamp = _asctime_ns(str(record.get("asctime", "1970-01-02 00:00:00,000")))
                who = record.get("replica") or record.get("component_id") or ""  # a replica's, or a proxy's
                what = record.get("deployment") or record.get("component_name") or ""
                yield LogLine(stamp, file, index, str(who), str(what), line)
            continue
        match = _TEXT_RECORD.match(line)
        if match is None:  # a traceback or a message's further lines: they belong to the record above
            if current is not None:
                yield dataclasses.replace(current, index=index, text=line)
            continue
        current = None
        if match["rest"].split(" ", 1)[0] == request_id:
            current = LogLine(_asctime_ns(match["asctime"]), file, index, match["replica"], match["component"], line)
            yield current


def scan_dirs(dirs: Iterable[str], request_id: str) -> list[LogLine]:
    """The request's lines in every replica and proxy log (``replica_*.log``, ``proxy_*.log`` and their rotated
    ``.log.N``) in ``dirs``."""
    found: list[LogLine] = []
    seen: set[str] = set()
    for directory in dirs:
        paths = glob.glob(os.path.join(directory, "replica_*.log*")) + glob.glob(os.path.join(directory, "proxy_*.log*"))
        for path in sorted(paths):
            real = os.path.realpath(path)
            if real in seen:
                continue
            seen.add(real)
            try:
                with open(path, encoding="utf-8", errors="replace") as f:
                    found.extend(request_lines(f, request_id, os.path.basename(path)))
            except OSError:  # rotated away while we looked
                continue
    return found


def _scan_node(dirs: list[str], request_id: str) -> list[LogLine]:
    """On one node: its own serve log directory, and the ``logs_dir`` of every deployment."""
    return scan_dirs([default_logs_dir(), *dirs], request_id)


def search_cluster(request_id: str, dirs: Iterable[str] = ()) -> list[LogLine]:
    """The request's lines from the replica logs of every alive node, in time order.

    ``dirs`` are extra directories to read on each node (the ``logs_dir`` deployments set). Nodes on one
    machine may share a directory: a line is kept once (file names hold the replica's id, unique in the cluster).
    """
    import ray
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    scan = ray.remote(num_cpus=0, max_retries=0)(_scan_node)
    pending = [
        scan.options(scheduling_strategy=NodeAffinitySchedulingStrategy(node["NodeID"], soft=False)).remote(list(dirs), request_id)
        for node in ray.nodes()
        if node.get("Alive")
    ]
    unique: dict[tuple[str, int], LogLine] = {}
    ready, _ = ray.wait(pending, num_returns=len(pending), timeout=NODE_TIMEOUT_S)
    for ref in ready:
        try:
            lines: list[LogLine] = ray.get(ref)
        except Exception:  # a node that died meanwhile: its lines are gone with it
            continue
        for line in lines:
            unique.setdefault((line.file, line.index), line)
    return sorted(unique.values())


def label(line: LogLine, replicas: dict[str, Any]) -> str:
    """``Deployment#replica`` for a line: the deployment's name from ``replicas`` (replica id -> name), else
    what the line says (TEXT lines say ``<app>_<deployment>``)."""
    return f"{replicas.get(line.replica, line.deployment)}#{line.replica}"
