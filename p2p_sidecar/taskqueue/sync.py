"""A broadcast wake-up that cannot be missed: "something changed since you last looked".

Workers claim, find nothing, then sleep until new work appears.  Between the
empty claim and the sleep they may await (a remote claim), and a submit in
that gap must still wake them.  So a waiter remembers the generation it saw
before it looked, and ``wait_since`` returns at once if the generation moved.
"""

from __future__ import annotations

import math

import trio


class Broadcast:
    def __init__(self) -> None:
        self.generation = 0
        self._event = trio.Event()
        self._followers: list[Broadcast] = []

    def fire(self) -> None:
        self.generation += 1
        self._event.set()
        self._event = trio.Event()
        for follower in self._followers:
            follower.fire()

    def chain(self, follower: Broadcast) -> None:
        """Fire ``follower`` too whenever this one fires (a listener that also has news of its own)."""
        self._followers.append(follower)

    def unchain(self, follower: Broadcast) -> None:
        if follower in self._followers:
            self._followers.remove(follower)

    async def wait_since(self, generation: int, timeout: float = math.inf) -> bool:
        """Return True once ``fire`` has been called after ``generation`` was read, False on timeout."""
        if self.generation != generation:
            return True
        with trio.move_on_after(timeout):
            await self._event.wait()
            return True
        return False
