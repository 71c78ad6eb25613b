"""Setting types both processes parse identically: bridge endpoints and lists.

Each process has its own settings class (``gateway.settings``,
``p2p_sidecar.settings``); what they share is how a bridge endpoint is
spelled and checked, how a list is written in an environment variable, and
how a bad value is reported at start-up.
"""

from __future__ import annotations

import json
import os
from typing import Annotated, Any

from pydantic import AfterValidator, BeforeValidator, Field, ValidationError
from pydantic_settings import NoDecode


def split_list(value: Any) -> Any:
    """Accept ``a,b,c`` or a JSON list for a list-valued setting; an empty string is an empty list."""
    if isinstance(value, str):
        text = value.strip()
        if not text:
            return []
        if text.startswith("["):
            try:
                return json.loads(text)
            except json.JSONDecodeError as exc:
                raise ValueError(f"looks like a JSON list but is not valid JSON: {exc.msg}") from None
        return [item.strip() for item in text.split(",") if item.strip()]
    return value


CommaList = Annotated[list[str], NoDecode, BeforeValidator(split_list)]
"""A list of strings written as ``a,b,c`` or ``["a", "b", "c"]`` in the environment."""


def check_endpoint(value: str) -> str:
    """A ZeroMQ endpoint the bridge can use: ``tcp://host:port`` or ``ipc:///path``."""
    if value.startswith("ipc://"):
        if len(value) <= len("ipc://"):
            raise ValueError("ipc:// endpoint needs a path, e.g. ipc:///run/mcp-p2p/bridge.sock")
        return value
    if value.startswith("tcp://"):
        host, sep, port = value[len("tcp://") :].rpartition(":")
        if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
            raise ValueError("tcp:// endpoint must be tcp://HOST:PORT with a port from 1 to 65535")
        return value
    raise ValueError("bridge endpoint must start with tcp:// or ipc://")


Endpoint = Annotated[str, BeforeValidator(lambda v: check_endpoint(str(v).strip()))]


def endpoint_is_loopback(endpoint: str) -> bool:
    """Whether a bridge endpoint stays on this machine (ipc, or tcp on a loopback address)."""
    if endpoint.startswith("ipc://"):
        return True
    return host_is_loopback(endpoint[len("tcp://") :].rpartition(":")[0])


def host_is_loopback(host: str) -> bool:
    """Whether a bind address is reachable from this machine only."""
    host = host.strip("[]")
    return host in ("localhost", "::1") or host.startswith("127.")


def check_otlp_endpoint(value: str | None) -> str | None:
    """An OTLP/HTTP traces URL; checked at start so a typo stops the process instead of losing every span."""
    if value is not None and not value.startswith(("http://", "https://")):
        raise ValueError("must be an http:// or https:// URL, e.g. http://127.0.0.1:4318/v1/traces")
    return value or None


OtlpEndpoint = Annotated[
    str | None,
    AfterValidator(check_otlp_endpoint),
    Field(
        description="OTLP/HTTP traces URL (e.g. http://127.0.0.1:4318/v1/traces): export this process's spans "
        "there; unset, no spans are made (a caller's traceparent is still passed on)."
    ),
]
"""Where a process exports its spans (``*_OTLP_ENDPOINT``), spelled and checked alike in both."""

OtlpSampleRatio = Annotated[
    float,
    Field(
        ge=0,
        le=1,
        description="Share of the traces this process starts that it records (calls inside a caller's trace "
        "follow the caller's sampled flag).",
    ),
]
"""``*_OTLP_SAMPLE_RATIO``: the same bounds and meaning in both processes."""


def check_tool_dirs(value: list[str]) -> list[str]:
    """Tool collection directories must exist at start-up, so a typo stops the process instead of hiding tools."""
    missing = [path for path in value if not os.path.isdir(os.path.expanduser(path))]
    if missing:
        raise ValueError(f"not a directory: {', '.join(missing)}")
    return value


def describe_settings_error(exc: ValidationError, env_prefix: str) -> str:
    """One line naming the environment variable(s) that were wrong, for a start-up failure."""
    parts = []
    for error in exc.errors(include_url=False):
        if not error.get("loc"):  # a check across several settings: its message names them
            parts.append(str(error["msg"]).removeprefix("Value error, "))
            continue
        field = str(error["loc"][0])
        value = error.get("input")
        shown = f" (got {value!r:.80})" if isinstance(value, str | int | float) else ""
        parts.append(f"{env_prefix}{field.upper()}: {error['msg']}{shown}")
    return "invalid setting: " + "; ".join(parts)
