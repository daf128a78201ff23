"""What the managers tell the control loop: run again now, the checkpoint is behind, a test's crash point.

One instance per controller, handed to every manager, so none of them reaches back into the controller.
"""

from __future__ import annotations

import asyncio
import dataclasses
from collections.abc import Callable


def _nothing() -> None:
    pass


@dataclasses.dataclass(eq=False)
class Signals:
    #: Sets when something happened (a death, a deploy, a report): the loop runs at once instead of waiting.
    kick: asyncio.Event = dataclasses.field(default_factory=asyncio.Event)
    #: Something the checkpoint holds changed: the loop writes it at the end of its pass.
    dirty: bool = False
    #: A test's point at which the controller ends itself (see Controller._test_crash_at), and what ends it.
    crash_at: str | None = None
    crash: Callable[[], None] = _nothing

    def wake(self) -> None:
        self.kick.set()

    def changed(self) -> None:
        """The checkpoint is behind, outside a loop pass: write it at the next one."""
        self.dirty = True
        self.wake()

    def crash_if(self, point: str) -> None:
        """End the controller here if a test asked for ``point`` (the checkpoint is written first)."""
        if self.crash_at == point:
            self.crash()
