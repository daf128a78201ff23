"""Ports for the servers tests start, picked where nothing else will take them before the server binds.

A port found by binding to port 0 comes from the kernel's ephemeral range, and once that probe socket closes the
kernel may hand the same port to any process's next outgoing connection (Ray's workers open many) before the
server binds it: CI once failed so, Ray Serve's proxy "Failed to bind to address '127.0.0.1:39527'". Ports here
come from below the ephemeral range and above Ray's worker ports (10002-19999 by default), where only an explicit
bind takes a port; each is checked free when handed out, and a process never hands out one port twice.
"""

from __future__ import annotations

import os
import random
import socket

#: Above Ray's default worker port range (``--min-worker-port 10002 --max-worker-port 19999``).
LOWEST = 20000

_given: set[int] = set()
_pick = random.Random(os.urandom(8))


def _ephemeral_low() -> int:
    try:
        with open("/proc/sys/net/ipv4/ip_local_port_range") as f:
            return int(f.read().split()[0])
    except (OSError, ValueError, IndexError):
        return 32768  # Linux's default


def free_port() -> int:
    """A loopback TCP port nobody holds now, outside the range the kernel hands out on its own."""
    highest = _ephemeral_low() - 1
    if highest <= LOWEST:  # an unusual kernel setting: fall back to the kernel's pick
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            return s.getsockname()[1]
    for _ in range(1000):
        port = _pick.randint(LOWEST, highest)
        if port in _given:
            continue
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                continue
        _given.add(port)
        return port
    raise RuntimeError(f"no free loopback port in {LOWEST}-{highest}")
