"""A plain function turned into a tool: its spec (schema from the signature) and how to call it.

The gateway's local tools and the sidecar's P2P tools are both made this way,
so a function means the same thing on either side of the bridge.  Calls go
through anyio, which runs on the gateway's asyncio loop and on the sidecar's
Trio loop alike: sync functions run in a worker thread, every call has a
deadline, and every failure leaves as a ``BridgeError``.
"""

from __future__ import annotations

import contextlib
import functools
import inspect
import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import anyio
import anyio.to_thread
from pydantic import BaseModel

from shared_schema.errors import BridgeError, ErrorCode
from shared_schema.progress import Sink, progress_sink
from shared_schema.signature import ArgumentsInvalid, Signature
from shared_schema.tool_metadata import METADATA_ATTRIBUTE, P2P_RUNTIME, RUNTIME_ATTRIBUTE, ToolMetadata, ToolSpec

log = logging.getLogger(__name__)


def to_jsonable(value: Any) -> Any:
    """Tool results travel as JSON (HTTP) and msgpack (bridge); pydantic models are dumped first."""
    if isinstance(value, BaseModel):
        return value.model_dump(mode="json")
    if isinstance(value, list | tuple):
        return [to_jsonable(item) for item in value]
    if isinstance(value, dict):
        return {str(key): to_jsonable(item) for key, item in value.items()}
    return value


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
    ) -> FunctionTool:
        metadata = metadata or metadata_of(fn)
        tool_name = name or metadata.name or fn.__name__
        signature = Signature(fn, name=tool_name)
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
        except RecursionError:
            message = "the tool's result cannot be encoded as JSON: it contains itself or nests too deeply"
            raise BridgeError(ErrorCode.TOOL_ERROR, message) from None
