"""Is a TCP port free to listen on, and if not, which process holds it (Linux ``/proc``, best effort)."""

from __future__ import annotations

import errno
import os
import socket


def bind_error(host: str, port: int) -> str | None:
    """Why a server could not listen on ``host:port`` now, or None if it could.

    Binds with SO_REUSEADDR, as uvicorn does, so a port in TIME_WAIT counts as free.
    """
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((host, port))
        except OSError as exc:
            if exc.errno == errno.EADDRINUSE:
                return "the address is already in use"
            return exc.strerror or str(exc)
    return None


def _listening_inodes(port: int) -> set[str]:
    inodes = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            with open(table, encoding="ascii") as f:
                next(f, None)
                for line in f:
                    fields = line.split()
                    local, state, inode = fields[1], fields[3], fields[9]
                    if state == "0A" and int(local.rsplit(":", 1)[1], 16) == port:  # 0A: LISTEN
                        inodes.add(inode)
        except OSError:
            continue
    return inodes


def port_holder(host: str, port: int) -> tuple[int, str] | None:
    """(pid, command line) of the process listening on ``port``, when this machine lets us see it."""
    inodes = _listening_inodes(port)
    if not inodes:
        return None
    wanted = {f"socket:[{i}]" for i in inodes}
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            fds = os.listdir(f"/proc/{pid}/fd")
        except OSError:
            continue
        for fd in fds:
            try:
                if os.readlink(f"/proc/{pid}/fd/{fd}") in wanted:
                    with open(f"/proc/{pid}/cmdline", "rb") as f:
                        cmdline = f.read().replace(b"\0", b" ").decode(errors="replace").strip()
                    return int(pid), cmdline
            except OSError:
                continue
    return None


def describe_holder(host: str, port: int) -> str:
    """``" (held by pid 12: python -m http.server)"``, or "" when it cannot tell."""
    holder = port_holder(host, port)
    if holder is None:
        return ""
    pid, cmdline = holder
    if len(cmdline) > 80:
        cmdline = cmdline[:77] + "..."
    return f" (held by pid {pid}: {cmdline})"
