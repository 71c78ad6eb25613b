"""Progress a running tool reports, wherever it runs, to whoever called it.

A tool calls ``report_progress(done, total, message)`` (from a sync tool in its
worker thread or from an async one; it is a no-op when nobody listens).  The
process that runs the tool installs a *sink* for the call (``progress_sink``)
that forwards it one hop: the gateway's MCP face turns it into
``notifications/progress`` for a client that sent a ``progressToken``; either
side of the bridge turns it into a ``PROGRESS`` envelope for the caller on the
other side; a task queue worker records it on the task.

Updates are thinned to one per ``MIN_INTERVAL`` seconds per call (the last one,
``done == total``, always passes) and messages are cut to ``MAX_MESSAGE``
characters, so a tool that reports in a tight loop costs its caller a bounded
amount of traffic.
"""

from __future__ import annotations

import contextlib
import math
import threading
import time
from collections.abc import Callable, Iterator
from contextvars import ContextVar
from dataclasses import dataclass
from typing import Any, TypeGuard

import anyio.from_thread
import anyio.lowlevel

MIN_INTERVAL = 0.05
MAX_MESSAGE = 1000


@dataclass(frozen=True, slots=True)
class Progress:
    """One update: ``done`` of ``total`` (unknown total: None), and what is happening now."""

    done: float
    total: float | None = None
    message: str | None = None

    def to_wire(self) -> dict[str, Any]:
        wire: dict[str, Any] = {"done": self.done}
        if self.total is not None:
            wire["total"] = self.total
        if self.message is not None:
            wire["message"] = self.message
        return wire

    @classmethod
    def from_wire(cls, raw: Any) -> Progress | None:
        """Rebuild from a decoded map; None (never an exception) for anything malformed."""
        if not isinstance(raw, dict):
            return None
        done, total, message = raw.get("done"), raw.get("total"), raw.get("message")
        if not _number(done) or (total is not None and not _number(total)):
            return None
        if message is not None and not isinstance(message, str):
            return None
        return cls(float(done), float(total) if total is not None else None, message[:MAX_MESSAGE] if message else None)


def _number(value: Any) -> TypeGuard[int | float]:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


Sink = Callable[[Progress], None]
"""Receives a call's updates on the event loop's thread of the process running the tool."""


class _CallProgress:
    """The sink of one call, reachable from the tool's thread, thinned as documented above."""

    def __init__(self, sink: Sink) -> None:
        self._sink = sink
        self._thread = threading.get_ident()
        self._token = anyio.lowlevel.current_token()
        self._last = 0.0

    def report(self, update: Progress) -> None:
        now = time.monotonic()
        final = update.total is not None and update.done >= update.total
        if now - self._last < MIN_INTERVAL and not final:
            return
        self._last = now
        if threading.get_ident() == self._thread:
            self._sink(update)
        else:
            anyio.from_thread.run_sync(self._sink, update, token=self._token)


_current: ContextVar[_CallProgress | None] = ContextVar("mcp_p2p_progress", default=None)


@contextlib.contextmanager
def progress_sink(sink: Sink | None) -> Iterator[None]:
    """Within this block (on the event loop, around a tool call) ``report_progress`` reaches ``sink``."""
    if sink is None:
        yield
        return
    reset = _current.set(_CallProgress(sink))
    try:
        yield
    finally:
        _current.reset(reset)


def report_progress(done: float, total: float | None = None, message: str | None = None) -> None:
    """Tell the caller how far the current tool call has come; harmless when nobody listens.

    ``done`` should grow from call to call; ``total`` is the end it grows to,
    when known.  Works from async tools and from sync tools in their thread.
    """
    call = _current.get()
    if call is None or not _number(done) or (total is not None and not _number(total)):
        return
    text = str(message)[:MAX_MESSAGE] if message is not None else None
    # RuntimeError: the call already ended (its loop no longer takes callbacks), so nobody listens any more
    with contextlib.suppress(RuntimeError):
        call.report(Progress(float(done), float(total) if total is not None else None, text))
