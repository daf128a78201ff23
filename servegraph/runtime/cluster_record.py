"""Where ``servegraph run`` and ``serve.run`` record the Ray cluster they started, for other commands to find.

One small JSON file (``~/.servegraph/cluster.json``, or ``SERVEGRAPH_CLUSTER_FILE``)
holding the cluster's address, who started it and that process's id. Imports no Ray.
"""

from __future__ import annotations

import dataclasses
import json
import os
from pathlib import Path


@dataclasses.dataclass(frozen=True)
class ClusterRecord:
    address: str
    #: What started it: "servegraph run", "serve.run", "servegraph deploy".
    by: str
    pid: int

    def process_alive(self) -> bool:
        try:
            os.kill(self.pid, 0)
        except ProcessLookupError:
            return False
        except PermissionError:  # alive, owned by someone else
            return True
        return True


def record_path() -> Path:
    override = os.environ.get("SERVEGRAPH_CLUSTER_FILE")
    return Path(override) if override else Path.home() / ".servegraph" / "cluster.json"


def read_record() -> ClusterRecord | None:
    try:
        data = json.loads(record_path().read_text(encoding="utf-8"))
        return ClusterRecord(address=str(data["address"]), by=str(data["by"]), pid=int(data["pid"]))
    except (OSError, ValueError, KeyError, TypeError):
        return None


def write_record(address: str, by: str, pid: int | None = None) -> None:
    """Record ``address``; best effort (a read-only home must not stop a deploy)."""
    path = record_path()
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps({"address": address, "by": by, "pid": pid or os.getpid()}), encoding="utf-8")
        tmp.replace(path)
    except OSError:
        pass


def forget_record(address: str) -> None:
    """Remove the record if it still names ``address`` (another run may have replaced it)."""
    record = read_record()
    if record is not None and record.address == address:
        try:
            record_path().unlink()
        except OSError:
            pass
