"""One tool per kind of MCP tool result, under the names the conformance suite calls (``test_*``).

Each returns a ``CallToolResult`` in its wire shape (``{"content": [...]}``), which the gateway passes
to MCP clients as it is.  Where they run is chosen by ``CONFORMANCE_TOOLS_RUNTIME``: ``fastapi`` (the
gateway, default) or ``trio`` (the sidecar, reached over the bridge).
"""

from __future__ import annotations

import base64
import io
import os
import struct
import time
import wave
import zlib
from typing import Any

from shared_schema import report_progress, tool_metadata

RUNTIME = os.environ.get("CONFORMANCE_TOOLS_RUNTIME", "fastapi")


def _png_pixel() -> bytes:
    """A 1x1 red PNG, made here so the bytes are what they claim to be."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    header = struct.pack(">IIBBBBB", 1, 1, 8, 2, 0, 0, 0)
    pixels = zlib.compress(b"\x00\xff\x00\x00")
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", pixels) + chunk(b"IEND", b"")


def _wav_silence() -> bytes:
    buffer = io.BytesIO()
    with wave.open(buffer, "wb") as out:
        out.setnchannels(1)
        out.setsampwidth(2)
        out.setframerate(8000)
        out.writeframes(b"\x00\x00" * 80)
    return buffer.getvalue()


def _image() -> dict[str, Any]:
    return {"type": "image", "data": base64.b64encode(_png_pixel()).decode(), "mimeType": "image/png"}


def _resource() -> dict[str, Any]:
    text = "This is an embedded resource content."
    return {"type": "resource", "resource": {"uri": "test://embedded-resource", "mimeType": "text/plain", "text": text}}


@tool_metadata(runtime=RUNTIME)
def test_simple_text() -> dict[str, Any]:
    """Returns one text block."""
    return {"content": [{"type": "text", "text": "This is a simple text response for testing."}]}


@tool_metadata(runtime=RUNTIME)
def test_image_content() -> dict[str, Any]:
    """Returns a 1x1 red PNG."""
    return {"content": [_image()]}


@tool_metadata(runtime=RUNTIME)
def test_audio_content() -> dict[str, Any]:
    """Returns a short silent WAV."""
    return {"content": [{"type": "audio", "data": base64.b64encode(_wav_silence()).decode(), "mimeType": "audio/wav"}]}


@tool_metadata(runtime=RUNTIME)
def test_embedded_resource() -> dict[str, Any]:
    """Returns an embedded text resource."""
    return {"content": [_resource()]}


@tool_metadata(runtime=RUNTIME)
def test_multiple_content_types() -> dict[str, Any]:
    """Returns text, an image and an embedded resource."""
    return {"content": [{"type": "text", "text": "Multiple content types test:"}, _image(), _resource()]}


@tool_metadata(runtime=RUNTIME)
def test_error_handling() -> dict[str, Any]:
    """Always fails: the caller gets an error result with the reason."""
    raise RuntimeError("This tool intentionally returns an error for testing")


@tool_metadata(runtime=RUNTIME)
def test_tool_with_progress() -> dict[str, Any]:
    """Reports progress three times (0, 50 and 100 of 100), then answers."""
    for done in (0, 50, 100):
        report_progress(done, 100, f"step {done // 50 + 1} of 3")
        time.sleep(0.06)
    return {"content": [{"type": "text", "text": "Progress test completed"}]}
