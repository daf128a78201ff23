"""Where servegraph records the Ray cluster it started, for its other commands to find (and stop).

One small JSON file (``~/.servegraph/cluster.json``, or ``SERVEGRAPH_CLUSTER_FILE``)
holding the cluster's address, who started it, the process whose end ends it, and
what a second process needs to reach it (where its token is). Imports no Ray.
"""

from __future__ import annotations

import dataclasses
import json
import os
from pathlib import Path
from typing import Any

#: Who starts clusters: the CLI's commands (through a cluster host) and ``serve.run`` in a user's script.
BY_RUN, BY_DEPLOY, BY_SERVE_RUN = "servegraph run", "servegraph deploy", "serve.run"


@dataclasses.dataclass(frozen=True)
class ClusterRecord:
    address: str
    #: What started it: "servegraph run", "servegraph deploy", "serve.run".
    by: str
    #: The process whose end ends the cluster: servegraph's cluster host, or the script that called serve.run.
    pid: int
    #: Ray's session directory (its ``logs/`` holds every Ray process's output).
    session_dir: str | None = None
    #: The token file the cluster's starter named (``RAY_AUTH_TOKEN_PATH``); None: Ray's default lookup.
    token_path: str | None = None
    #: ``pid`` is servegraph's cluster host (see :mod:`servegraph.runtime.client.cluster_host`): servegraph may stop it.
    host: bool = False
    #: The foreground ``servegraph run`` the cluster ends with (None: it lives until ``servegraph shutdown``).
    owner_pid: int | None = None
    #: The user asked to keep the cluster (``--keep-cluster``): no owner's end stops it.
    keep: bool = False

    def process_alive(self) -> bool:
        return pid_alive(self.pid)

    def describe(self) -> str:
        """``started by servegraph run, pid 12``: how commands name it."""
        return f"started by {self.by}, pid {self.pid}"


def pid_alive(pid: int | None) -> bool:
    """Whether process ``pid`` runs (a zombie, ended but not yet reaped by its parent, does not)."""
    if not pid:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # alive, owned by someone else
        return True
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except (OSError, IndexError):  # no /proc here: signal 0 is all there is
        return True


def record_path() -> Path:
    override = os.environ.get("SERVEGRAPH_CLUSTER_FILE")
    return Path(override) if override else Path.home() / ".servegraph" / "cluster.json"


def read_record() -> ClusterRecord | None:
    try:
        data: dict[str, Any] = json.loads(record_path().read_text(encoding="utf-8"))
        known = {f.name for f in dataclasses.fields(ClusterRecord)}
        record = ClusterRecord(**{k: v for k, v in data.items() if k in known})
        return dataclasses.replace(record, address=str(record.address), by=str(record.by), pid=int(record.pid))
    except (OSError, ValueError, KeyError, TypeError):
        return None


def save_record(record: ClusterRecord) -> None:
    """Write ``record``; best effort (a read-only home must not stop a deploy)."""
    path = record_path()
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f"{path.name}.{os.getpid()}.tmp")
        tmp.write_text(json.dumps(dataclasses.asdict(record)), encoding="utf-8")
        tmp.replace(path)
    except OSError:
        pass


def write_record(address: str, by: str, pid: int | None = None, **fields: Any) -> None:
    """Record ``address``, started by ``by`` and ending with process ``pid`` (default: this one)."""
    save_record(ClusterRecord(address=address, by=by, pid=pid or os.getpid(), **fields))


def forget_record(address: str) -> None:
    """Remove the record if it still names ``address`` (another run may have replaced it)."""
    record = read_record()
    if record is not None and record.address == address:
        try:
            record_path().unlink()
        except OSError:
            pass


def host_log_path() -> Path:
    """Where servegraph's cluster host writes what Ray prints while it starts and stops a cluster."""
    return record_path().with_name("cluster-host.log")
