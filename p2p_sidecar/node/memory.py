"""Giving the memory of large messages back to the operating system once they are gone.

glibc's allocator keeps memory a process freed in its heap for later use: after
peers held 32 MiB of unfinished messages and went away, the sidecar's Python
objects were all gone (tracemalloc) but its ``[heap]`` mapping stayed 32 MiB
larger, for minutes, until ``malloc_trim(0)`` was called (measured with
``bench/stalled_frames.py``; the heap went back to its size before the attack).
So the node trims after large messages have come and gone: ``HeapTrimmer``
reads the node's ``PartialFrameBudget`` every ``CHECK_EVERY`` seconds, and calls
``malloc_trim`` when at least ``MIN_RELEASED`` were held since the last trim
(the budget's high water mark) and are free again, at most once per check.  Elsewhere than glibc it does
nothing.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import logging
from collections.abc import Callable

import trio

from p2p_sidecar.node.budget import PartialFrameBudget

log = logging.getLogger(__name__)

MIN_RELEASED = 1024 * 1024
CHECK_EVERY = 2.0


def _malloc_trim() -> Callable[[int], int] | None:
    name = ctypes.util.find_library("c")
    if name is None:
        return None
    try:
        libc = ctypes.CDLL(name)
        trim = libc.malloc_trim
    except (OSError, AttributeError):
        return None  # not glibc (musl, macOS): nothing to do
    trim.argtypes = [ctypes.c_size_t]
    trim.restype = ctypes.c_int
    return trim


class HeapTrimmer:
    def __init__(self, budget: PartialFrameBudget, *, min_released: int = MIN_RELEASED) -> None:
        self._budget = budget
        self._min_released = min_released
        self._trim = _malloc_trim()

    def check(self) -> bool:
        """Trim if enough was held since the last trim and is free now; returns whether it trimmed."""
        held = self._budget.held
        if self._trim is None or self._budget.high_water - held < self._min_released:
            return False
        self._trim(0)
        self._budget.high_water = held
        return True

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        task_status.started()
        while True:
            await trio.sleep(CHECK_EVERY)
            self.check()
