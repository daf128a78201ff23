"""The long-poll host: each (application, deployment) membership and each application's lanes, versioned.

Routers in every process hold a snapshot of versions and call ``Controller.listen`` with it; the call
returns what changed, or nothing after :data:`LISTEN_TIMEOUT_S` (Ray Serve's ``_private/long_poll.py``
``LongPollHost``). A version is (this controller's incarnation, a counter), so a restarted controller's
versions never equal the ones routers hold.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from typing import Any

#: A long-poll call returns after this long even when nothing changed.
LISTEN_TIMEOUT_S = 30.0

Key = tuple[str, str]
Version = tuple[int, int]


class MembershipHost:
    def __init__(self) -> None:
        self.incarnation = time.time_ns()
        #: Counts publications; lane ids of a new lane table start after it (they stay unique across deploys).
        self.counter = 0
        #: Versions of every key ever published by this incarnation, and what was published.
        self.versions: dict[Key, Version] = {}
        self.values: dict[Key, Any] = {}
        self._published: asyncio.Future = asyncio.get_event_loop().create_future()

    def publish(self, key: Key, value: Any) -> None:
        """A new value for ``key``: every waiting ``listen`` looks again."""
        self.counter += 1
        self.versions[key] = (self.incarnation, self.counter)
        self.values[key] = value
        published, self._published = self._published, asyncio.get_event_loop().create_future()
        published.set_result(None)

    def published(self, key: Key) -> tuple[Version, Any] | None:
        """What was last published for ``key``, with its version; None if nothing was."""
        if key in self.versions:
            return self.versions[key], self.values[key]
        return None

    async def listen(
        self, snapshot: dict[Key, Any], current: Callable[[Key], tuple[Version, Any] | None]
    ) -> dict[Key, tuple[Version, Any]]:
        """The keys of ``snapshot`` whose ``current`` version differs, waiting up to LISTEN_TIMEOUT_S for one.

        ``current`` answers None for a key held back (see DeploymentManager.publish): it is not returned.
        """
        deadline = time.monotonic() + LISTEN_TIMEOUT_S
        while True:
            out = {}
            for key, known in snapshot.items():
                now = current(tuple(key))  # type: ignore[arg-type]
                if now is not None and now[0] != known:
                    out[key] = now
            remaining = deadline - time.monotonic()
            if out or remaining <= 0:
                return out
            try:
                await asyncio.wait_for(asyncio.shield(self._published), remaining)
            except asyncio.TimeoutError:
                return {}
