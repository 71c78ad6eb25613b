"""Run an ``async def`` tool on the event loop it was written for.

The gateway runs asyncio and the sidecar runs Trio; a coroutine that awaits
``asyncio.sleep`` dies under Trio, one that awaits ``trio.sleep`` dies under
asyncio.  Collection modules say nothing about this, so it is read from what
the tool's module imports:

* uses asyncio (the module, or anything imported from it) and not trio:
  "asyncio" flavour;
* uses trio and not asyncio: "trio" flavour;
* otherwise (anyio, both, or neither): "neutral", which runs on either loop.

A tool whose flavour differs from the host's loop runs in a worker thread on a
fresh loop of its own flavour, one per call (``asyncio.run`` /
``trio.run``), bounded by its ``timeout_seconds``.  That costs a thread and a
loop start per call (well under a millisecond) and keeps the host's loop free.
"""

from __future__ import annotations

import asyncio
import functools
import inspect
import types
from collections.abc import Callable
from typing import Any, Literal

Host = Literal["asyncio", "trio"]
Flavour = Literal["asyncio", "trio", "neutral"]

_PLAIN_OBJECTS = (types.FunctionType, types.BuiltinFunctionType, type)


def _origin(value: Any) -> str:
    """The top-level package a module global comes from, without triggering lazy attribute hooks."""
    if isinstance(value, types.ModuleType):
        name = vars(value).get("__name__", "")
    elif isinstance(value, _PLAIN_OBJECTS):
        name = vars(value).get("__module__", "") if isinstance(value, type) else value.__module__
    else:
        name = type(value).__module__
    return name.partition(".")[0] if isinstance(name, str) else ""


def coroutine_flavour(fn: Callable[..., Any]) -> Flavour:
    namespace = getattr(inspect.unwrap(fn), "__globals__", {})
    used = {origin for origin in map(_origin, list(namespace.values())) if origin in ("asyncio", "trio")}
    if used == {"asyncio"}:
        return "asyncio"
    if used == {"trio"}:
        return "trio"
    return "neutral"


def adapt_for_host(fn: Callable[..., Any], host: Host, timeout: float) -> Callable[..., Any]:
    """``fn`` itself when it can run on ``host``'s loop, else a sync wrapper running it on its own loop."""
    if not inspect.iscoroutinefunction(fn):
        return fn
    flavour = coroutine_flavour(fn)
    if flavour in ("neutral", host):
        return fn
    if flavour == "asyncio":

        @functools.wraps(fn)
        def run_on_asyncio(*args: Any, **kwargs: Any) -> Any:
            return asyncio.run(asyncio.wait_for(fn(*args, **kwargs), timeout))

        return run_on_asyncio

    import trio

    @functools.wraps(fn)
    def run_on_trio(*args: Any, **kwargs: Any) -> Any:
        async def bounded() -> Any:
            with trio.fail_after(timeout):
                return await fn(*args, **kwargs)

        try:
            return trio.run(bounded)
        except trio.TooSlowError:
            raise TimeoutError(f"did not finish within {timeout:.3g}s") from None

    return run_on_trio
