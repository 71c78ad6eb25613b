"""Task types: pluggable executors found through the ``mcp_p2p.task_executors`` entry point group.

An executor is ``async def run(payload, context) -> JSON value``; the entry
point's name is the task type.  A package adds a task type by declaring, in
its own ``pyproject.toml``::

    [project.entry-points."mcp_p2p.task_executors"]
    resize = "my_package.tasks:resize"

and every sidecar that has it installed runs (and, on a P2P network,
advertises) that type.  The built-ins below are declared the same way in this
project's ``pyproject.toml``.  An executor raises ``TaskFailed`` for a clear
failure; anything else it raises is reported as a failed attempt too.

Executors run on the sidecar's Trio loop, so CPU-heavy work must leave it:
``hash`` moves large or repeated hashing to a worker thread
(``trio.to_thread.run_sync``), and plugins should do the same.  An optional
``validate(payload)`` attribute lets ``task_submit`` refuse a bad payload at
once instead of failing later on some worker.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass, field
from importlib.metadata import entry_points
from typing import Any, Protocol

import trio

from p2p_sidecar.taskqueue.errors import InvalidRequest, TaskFailed
from shared_schema import BridgeError, ErrorCode
from shared_schema.content import cid_v1_raw, payload_bytes
from shared_schema.progress import Progress, Sink

log = logging.getLogger(__name__)

ENTRY_POINT_GROUP = "mcp_p2p.task_executors"
TEST_ENTRY_POINT_GROUP = "mcp_p2p.test_task_executors"
"""Test aids (``fail``): loaded only when asked for (``SIDECAR_WORKER_TEST_TASK_TYPES``), never by default."""
THREAD_THRESHOLD_BYTES = 64 * 1024
"""Hashing more than this (payload size x iterations) happens in a worker thread."""

ToolCaller = Callable[..., Awaitable[Any]]
"""``call(tool, arguments, *, timeout)``: ``BridgeServer.call_gateway``, or a sidecar tool's call."""
ProgressReporter = Callable[..., None]
"""``report_progress(message=None, done=None, total=None)``."""


class LocalTools(Protocol):
    """This sidecar's own (P2P) tools, as a ``tool`` task may call them."""

    def has(self, name: str) -> bool: ...

    async def call(
        self, name: str, arguments: dict[str, Any], *, timeout: float, progress: Sink | None = None
    ) -> Any: ...


def _no_progress(message: str | None = None, done: float | None = None, total: float | None = None) -> None:
    return None


@dataclass(frozen=True)
class TaskContext:
    """What an executor may know about the attempt it runs, and what it may call."""

    task_id: str
    task_type: str
    attempt: int
    owner: str | None
    """Peer id of the node that owns the task; None when it is this node."""
    call_gateway: ToolCaller | None = None
    local_tools: LocalTools | None = None
    remote_tools_allow: frozenset[str] = field(default_factory=frozenset)
    report_progress: ProgressReporter = _no_progress
    """Tell the task's owner how far this attempt got: ``report_progress("resizing", done=3, total=10)``.

    Shown as the task's ``progress`` wherever it is read; cheap to call often (changes travel at most
    every 0.2 s, and with the lease heartbeats)."""

    def remaining(self) -> float:
        """Seconds left before this attempt's timeout (the enclosing cancel scope's deadline)."""
        return max(0.0, trio.current_effective_deadline() - trio.current_time())


class Executor(Protocol):
    def __call__(self, payload: Any, context: TaskContext, /) -> Awaitable[Any]: ...


def _object(payload: Any, task_type: str) -> dict[str, Any]:
    if not isinstance(payload, dict):
        raise InvalidRequest(f"a {task_type} task's payload must be an object")
    return payload


def with_validator(check: Callable[[Any], None]) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    def attach(fn: Callable[..., Any]) -> Callable[..., Any]:
        fn.__dict__["validate"] = check  # the attribute ExecutorRegistry.validate looks for
        return fn

    return attach


# -- built-in task types --------------------------------------------------------------------------------
async def run_echo(payload: Any, context: TaskContext) -> Any:
    """Returns its payload unchanged: the cheapest task, for tests and for measuring the queue itself."""
    return payload


def _check_sleep(payload: Any) -> None:
    seconds = _object(payload, "sleep").get("seconds")
    if isinstance(seconds, bool) or not isinstance(seconds, int | float) or not 0 <= seconds <= 86400:
        raise InvalidRequest("a sleep task needs payload.seconds, a number from 0 to 86400")


@with_validator(_check_sleep)
async def run_sleep(payload: Any, context: TaskContext) -> Any:
    """Sleeps ``payload.seconds`` (0-86400) and returns ``payload.result`` if given: a stand-in for slow work.

    Reports its progress (seconds slept of the total) about once a second, as a long executor should.
    """
    _check_sleep(payload)
    total = float(payload["seconds"])
    deadline = trio.current_time() + total
    while (left := deadline - trio.current_time()) > 0:
        if total >= 1.0:
            context.report_progress("sleeping", done=round(total - left, 3), total=total)
        await trio.sleep(min(left, 1.0))
    return {"slept_s": payload["seconds"], "result": payload.get("result")}


_ALGORITHMS = ("sha256", "sha512", "sha3_256", "blake2b")


def _check_hash(payload: Any) -> None:
    body = _object(payload, "hash")
    if not isinstance(body.get("data"), str):
        raise InvalidRequest("a hash task needs payload.data, a string (UTF-8 text, or base64 with encoding)")
    if body.get("algorithm", "sha256") not in _ALGORITHMS:
        raise InvalidRequest(f"payload.algorithm must be one of {list(_ALGORITHMS)}")
    if body.get("encoding", "utf-8") not in ("utf-8", "base64"):
        raise InvalidRequest("payload.encoding must be utf-8 or base64")
    iterations = body.get("iterations", 1)
    if isinstance(iterations, bool) or not isinstance(iterations, int) or not 1 <= iterations <= 10_000_000:
        raise InvalidRequest("payload.iterations must be an integer from 1 to 10000000")


def hash_chain(data: bytes, algorithm: str, iterations: int) -> str:
    """``H(data)``, then ``H`` of the previous digest's bytes, ``iterations`` times in all."""
    value = hashlib.new(algorithm, data).digest()
    for _ in range(iterations - 1):
        value = hashlib.new(algorithm, value).digest()
    return value.hex()


@with_validator(_check_hash)
async def run_hash(payload: Any, context: TaskContext) -> Any:
    """Hashes ``payload.data`` (``iterations`` times, chained): deterministic CPU work whose answer anyone can check.

    Returns ``{algorithm, digest, size, cid, iterations}``; ``cid`` is the data's CIDv1, as ``hash_content`` gives.
    """
    try:
        _check_hash(payload)
        raw = payload_bytes(payload["data"], payload.get("encoding", "utf-8"))
    except (InvalidRequest, BridgeError) as exc:
        raise TaskFailed(str(getattr(exc, "message", exc)), retryable=False, code="invalid_payload") from None
    algorithm = payload.get("algorithm", "sha256")
    iterations = payload.get("iterations", 1)
    if len(raw) * iterations > THREAD_THRESHOLD_BYTES or iterations > 1000:
        digest = await trio.to_thread.run_sync(hash_chain, raw, algorithm, iterations, abandon_on_cancel=True)
    else:
        digest = hash_chain(raw, algorithm, iterations)
    return {
        "algorithm": algorithm,
        "digest": digest,
        "size": len(raw),
        "cid": cid_v1_raw(raw),
        "iterations": iterations,
    }


def _check_tool(payload: Any) -> None:
    body = _object(payload, "tool")
    if not isinstance(body.get("tool"), str) or not body["tool"]:
        raise InvalidRequest("a tool task needs payload.tool, the name of a gateway or sidecar tool")
    if not isinstance(body.get("arguments", {}), dict):
        raise InvalidRequest("payload.arguments must be an object")


@with_validator(_check_tool)
async def run_tool(payload: Any, context: TaskContext) -> Any:
    """Runs ``payload.tool`` with ``payload.arguments`` on the executing node: one of its sidecar's own tools
    (``p2p_remote_call_tool``, a mounted P2P tool) if it has one of that name, else its gateway's, through
    the bridge.

    Every tool thereby becomes a distributable task.  For a task owned by
    another peer, the tool must be in ``SIDECAR_REMOTE_TOOLS_ALLOW``.
    """
    try:
        _check_tool(payload)
    except InvalidRequest as exc:
        raise TaskFailed(exc.message, retryable=False, code="invalid_payload") from None
    tool = payload["tool"]
    if context.owner is not None and tool not in context.remote_tools_allow:
        message = f"tool {tool!r} is not in this node's SIDECAR_REMOTE_TOOLS_ALLOW"
        raise TaskFailed(message, retryable=False, code="forbidden")
    arguments = payload.get("arguments", {})
    timeout = max(0.1, context.remaining())

    def forward(update: Progress) -> None:
        """The tool's own progress (a sidecar tool's, or a gateway tool's across the bridge) is the task's."""
        with contextlib.suppress(TaskFailed):  # a tool's malformed update is dropped, never the task's failure
            context.report_progress(message=update.message, done=update.done, total=update.total)

    try:
        if context.local_tools is not None and context.local_tools.has(tool):
            return await context.local_tools.call(tool, arguments, timeout=timeout, progress=forward)
        if context.call_gateway is None:
            raise TaskFailed("this sidecar has no bridge to a gateway", code="unavailable")
        return await context.call_gateway(tool, arguments, timeout=timeout, on_progress=forward)
    except BridgeError as exc:
        retryable = exc.code in (ErrorCode.UNAVAILABLE, ErrorCode.BUSY, ErrorCode.TIMEOUT)
        raise TaskFailed(f"tool {tool!r}: {exc.message}", retryable=retryable, code=exc.code.value) from None


def _check_fail(payload: Any) -> None:
    body = _object(payload, "fail")
    times = body.get("fail_times", 1_000_000)
    if isinstance(times, bool) or not isinstance(times, int) or times < 0:
        raise InvalidRequest("payload.fail_times must be a non-negative integer")


@with_validator(_check_fail)
async def run_fail(payload: Any, context: TaskContext) -> Any:
    """A test aid, loaded only with ``SIDECAR_WORKER_TEST_TASK_TYPES=true``: fails its first ``fail_times``
    attempts (default: always), then returns ``{attempt, result}``.

    ``message`` sets the failure's text and ``retryable: false`` makes it final,
    so retries, backoff and failure reporting can be exercised on purpose.
    """
    if context.attempt <= payload.get("fail_times", 1_000_000):
        message = str(payload.get("message", f"failing on purpose (attempt {context.attempt})"))
        raise TaskFailed(message, retryable=bool(payload.get("retryable", True)))
    return {"attempt": context.attempt, "result": payload.get("result")}


# -- the registry -------------------------------------------------------------------------------------------
class ExecutorRegistry:
    """The task types this node can run, by name."""

    def __init__(self, executors: dict[str, Executor]) -> None:
        self._executors = dict(sorted(executors.items()))

    @classmethod
    def discover(cls, allow: Iterable[str] = (), *, test_aids: bool = False) -> ExecutorRegistry:
        """Load every executor of the entry point group; with ``allow``, only those types; with ``test_aids``,
        the test aid group's too (``fail``, which a production node must not advertise to its peers).

        A plugin that fails to import is logged and skipped: one broken
        package must not take the sidecar (and every other task type) down.
        """
        wanted = set(allow)
        found: dict[str, Executor] = {}
        groups = [ENTRY_POINT_GROUP, TEST_ENTRY_POINT_GROUP] if test_aids else [ENTRY_POINT_GROUP]
        for point in (point for group in groups for point in entry_points(group=group)):
            if wanted and point.name not in wanted:
                continue
            if point.name in found:
                log.warning("task type %r is declared twice; keeping the first (%s)", point.name, point.value)
                continue
            try:
                loaded = point.load()
            except Exception:  # boundary: third-party plugin code runs here
                log.exception("task executor %s (%s) failed to load; type skipped", point.name, point.value)
                continue
            if not callable(loaded):
                log.error("task executor %s (%s) is not callable; type skipped", point.name, point.value)
                continue
            found[point.name] = loaded
        missing = wanted - set(found)
        if missing:
            log.warning("SIDECAR_WORKER_TASK_TYPES names types that are not installed: %s", sorted(missing))
        return cls(found)

    @property
    def types(self) -> list[str]:
        return list(self._executors)

    def get(self, task_type: str) -> Executor | None:
        return self._executors.get(task_type)

    def validate(self, task_type: str, payload: Any) -> None:
        """Run the type's own payload check, if it has one (raises ``InvalidRequest``)."""
        executor = self._executors.get(task_type)
        check = getattr(executor, "validate", None)
        if check is None:
            return
        try:
            check(payload)
        except (ValueError, TypeError) as exc:  # a plugin's validator may use the plain exceptions
            raise InvalidRequest(f"{task_type} payload: {exc}") from None

    def __contains__(self, task_type: object) -> bool:
        return task_type in self._executors
