"""A plain function turned into a tool: its spec (schema from the signature) and how to call it.

The gateway's local tools and the sidecar's P2P tools are both made this way,
so a function means the same thing on either side of the bridge.  Calls go
through anyio, which runs on the gateway's asyncio loop and on the sidecar's
Trio loop alike: sync functions run in a worker thread, every call has a
deadline, and every failure leaves as a ``BridgeError``.

A result leaves as JSON-ready data or not at all: pydantic models,
dataclasses, tuples and sets, dates, UUIDs, paths, enums and objects with a
``tolist()`` (numpy arrays and scalars) are converted, ``NaN`` and infinities
become ``null`` (as in JavaScript's ``JSON.stringify``), and anything else (an
arbitrary object, a circular structure, bytes that are not UTF-8) makes the
call a ``tool_error`` saying so, never a failure of the face that answers it.

What the calling layer has to tell the caller beside the result (arguments a
lenient signature ignored) is collected with ``call_notes`` by the face that
answers, which puts it in the answer's ``_meta``.
"""

from __future__ import annotations

import contextlib
import contextvars
import functools
import inspect
import logging
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import anyio
import anyio.to_thread
from pydantic_core import PydanticSerializationError, to_jsonable_python

from shared_schema.errors import BridgeError, ErrorCode
from shared_schema.progress import Sink, progress_sink
from shared_schema.signature import ArgumentsInvalid, Signature
from shared_schema.tool_metadata import METADATA_ATTRIBUTE, P2P_RUNTIME, RUNTIME_ATTRIBUTE, ToolMetadata, ToolSpec

log = logging.getLogger(__name__)


IGNORED_ARGUMENTS_NOTE = "io.github.mcp-p2p/ignored_arguments"
"""``_meta`` key: the argument names a call carried that its tool does not take (dropped, not refused)."""

_notes: contextvars.ContextVar[dict[str, Any] | None] = contextvars.ContextVar("call_notes", default=None)


@contextlib.contextmanager
def call_notes() -> Iterator[dict[str, Any]]:
    """Collect the notes of the calls made inside (in this task; worker threads inherit it); empty when none."""
    notes: dict[str, Any] = {}
    token = _notes.set(notes)
    try:
        yield notes
    finally:
        _notes.reset(token)


def note_ignored_arguments(names: list[str]) -> None:
    notes = _notes.get()
    if notes is not None and names:
        ignored = notes.setdefault(IGNORED_ARGUMENTS_NOTE, [])
        ignored.extend(name for name in names if name not in ignored)


class ResultNotJSON(ValueError):
    """A tool result with a value JSON cannot carry."""


def _fallback(value: Any) -> Any:
    tolist = getattr(value, "tolist", None)  # numpy arrays and scalars, array.array
    if callable(tolist):
        return tolist()
    raise ResultNotJSON(f"{type(value).__module__}.{type(value).__qualname__} is not JSON")


def to_jsonable(value: Any) -> Any:
    """Tool results travel as JSON (HTTP) and msgpack (bridge): convert, or raise ``ResultNotJSON``."""
    if type(value) is dict and not value:
        return value
    try:
        return to_jsonable_python(value, inf_nan_mode="null", fallback=_fallback)
    except ResultNotJSON:
        raise
    except (PydanticSerializationError, ValueError, TypeError, RecursionError) as exc:
        raise ResultNotJSON(f"{type(exc).__name__}: {exc}") from None


def metadata_of(fn: Callable[..., Any], **overrides: Any) -> ToolMetadata:
    """Read a function's metadata from the conventions tool modules already use.

    ``@tool_metadata(...)`` wins; otherwise a ``_mcp_runtime = "trio"``
    attribute marks the tool for the P2P runtime; otherwise defaults.
    """
    metadata = getattr(fn, METADATA_ATTRIBUTE, None)
    if not isinstance(metadata, ToolMetadata):
        runtime = getattr(fn, RUNTIME_ATTRIBUTE, None)
        metadata = ToolMetadata(runtime=P2P_RUNTIME) if runtime == P2P_RUNTIME else ToolMetadata()
    return metadata.model_copy(update=overrides) if overrides else metadata


def description_of(fn: Callable[..., Any], metadata: ToolMetadata) -> str:
    text = metadata.mcp_description or inspect.getdoc(fn) or ""
    if metadata.deprecated:
        note = metadata.deprecation_message or "this tool is deprecated"
        text = f"[DEPRECATED: {note}] {text}".rstrip()
    return text


@dataclass(frozen=True, eq=False)
class FunctionTool:
    fn: Callable[..., Any]
    spec: ToolSpec
    signature: Signature
    is_async: bool

    @property
    def name(self) -> str:
        return self.spec.name

    @property
    def metadata(self) -> ToolMetadata:
        return self.spec.metadata

    @classmethod
    def from_function(
        cls,
        fn: Callable[..., Any],
        *,
        name: str | None = None,
        metadata: ToolMetadata | None = None,
        annotations: dict[str, Any] | None = None,
        lenient: bool = False,
    ) -> FunctionTool:
        """``lenient``: judge arguments as a server that did not validate would (``Signature``)."""
        metadata = metadata or metadata_of(fn)
        tool_name = name or metadata.name or fn.__name__
        signature = Signature(fn, name=tool_name, lenient=lenient)
        spec = ToolSpec(
            name=tool_name,
            description=description_of(fn, metadata),
            input_schema=metadata.mcp_schema or signature.input_schema(),
            metadata=metadata,
            annotations=annotations,
        )
        return cls(fn=fn, spec=spec, signature=signature, is_async=inspect.iscoroutinefunction(fn))

    async def invoke(self, arguments: dict[str, Any], timeout: float | None, progress: Sink | None = None) -> Any:
        """Validate, run, and return a JSON-able result, or raise ``BridgeError``.

        ``timeout`` (seconds) bounds the run with its own cancel scope; pass
        None when the caller's scope already carries the deadline (the
        sidecar's bridge does), which saves a scope per call on the hot path.
        ``progress`` receives what the tool reports with ``report_progress``.
        """
        try:
            kwargs = self.signature.bind(arguments)
        except ArgumentsInvalid as exc:
            raise BridgeError(ErrorCode.INVALID_ARGUMENTS, str(exc), {"errors": exc.errors}) from None
        if self.signature.lenient:
            note_ignored_arguments(self.signature.ignored(arguments))
        try:
            with (
                anyio.fail_after(timeout) if timeout is not None else contextlib.nullcontext(),
                progress_sink(progress),
            ):
                if self.is_async:
                    result = await self.fn(**kwargs)
                else:
                    call = functools.partial(self.fn, **kwargs)
                    result = await anyio.to_thread.run_sync(call, abandon_on_cancel=True)
        except BridgeError:
            raise
        except TimeoutError:
            raise BridgeError(ErrorCode.TIMEOUT, f"tool {self.name!r} did not finish within {timeout:.3g}s") from None
        except Exception as exc:  # the tool's own failure: reported to the caller, never a crash
            log.exception("tool %s raised", self.name)
            raise BridgeError(ErrorCode.TOOL_ERROR, f"{type(exc).__name__}: {exc}") from exc
        if self.metadata.deprecated and isinstance(result, dict):
            result = {**result, "_deprecated": self.metadata.deprecation_message or "this tool is deprecated"}
        try:
            return to_jsonable(result)
        except ResultNotJSON as exc:
            log.warning("tool %s returned a result JSON cannot carry: %s", self.name, exc)
            raise BridgeError(
                ErrorCode.TOOL_ERROR, f"the result of {self.name!r} cannot be encoded as JSON: {exc}"
            ) from None
