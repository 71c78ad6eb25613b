"""The uvicorn internals the gateway builds on, checked before it serves.

Two places go below uvicorn's documented surface:

* ``gateway/http_limits.py`` subclasses uvicorn's HTTP protocol classes (``HttpToolsProtocol``, ``H11Protocol``)
  and reads their per-connection state: ``cycle`` (with ``more_body``, ``response_started``,
  ``response_complete``), ``transport``, ``loop`` and ``client``, around ``connection_made``,
  ``data_received`` and ``connection_lost``.
* ``gateway/server.py`` subclasses ``uvicorn.Server`` and overrides ``capture_signals``, ``handle_exit``,
  ``startup`` and ``shutdown``, relying on ``capture_signals`` being where uvicorn installs its signal
  handlers and re-raises the captured signal afterwards.  Its ``startup`` replaces uvicorn's whole: it runs
  ``self.lifespan.startup()`` (then ``should_exit``, ``state``), makes each connection's protocol as
  ``config.http_protocol_class(config=..., server_state=self.server_state, app_state=...)``, and puts its own
  acceptors in ``self.servers``, of which uvicorn's ``shutdown`` calls ``close()`` and ``wait_closed()``.

None of that is public API, so a uvicorn release may change it without notice, and the symptom would be quiet
(a slowloris guard that no longer fires, a SIGTERM that exits 1 again).  So the gateway refuses to start on a
uvicorn other than the one these were checked against, and says what to re-check; ``CHECKED_VERSION`` moves
only after ``tests/test_limits.py``, ``tests/test_lifecycle.py`` and ``tests/test_sd_notify.py`` pass on the
new version.  The pin in pyproject.toml keeps the two in step.
"""

from __future__ import annotations

import inspect

import uvicorn

CHECKED_VERSION = "0.54.0"

_PROTOCOL_METHODS = ("connection_made", "data_received", "connection_lost")
_SERVER_METHODS = ("capture_signals", "handle_exit", "startup", "shutdown")


class UvicornMismatch(RuntimeError):
    """The installed uvicorn is not the one whose internals the gateway was checked against."""


def check_uvicorn(version: str = uvicorn.__version__) -> None:
    """Raise ``UvicornMismatch`` (one line saying what to re-check) unless ``version`` is the checked one and
    the classes the gateway subclasses still have the methods it overrides."""
    if version != CHECKED_VERSION:
        raise UvicornMismatch(
            f"uvicorn {version} is installed, but gateway/http_limits.py and gateway/server.py use internals of "
            f"uvicorn {CHECKED_VERSION} (see gateway/uvicorn_internals.py): re-check them, then CHECKED_VERSION"
        )
    from uvicorn.protocols.http.h11_impl import H11Protocol
    from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

    missing = [
        f"{cls.__name__}.{name}"
        for cls, names in (
            (H11Protocol, _PROTOCOL_METHODS),
            (HttpToolsProtocol, _PROTOCOL_METHODS),
            (uvicorn.Server, _SERVER_METHODS),
        )
        for name in names
        if not callable(getattr(cls, name, None))
    ]
    for cls in (H11Protocol, HttpToolsProtocol):
        parameters = inspect.signature(cls).parameters
        missing += [
            f"{cls.__name__}({name}=)" for name in ("config", "server_state", "app_state") if name not in parameters
        ]
    capture_signals = getattr(uvicorn.Server, "capture_signals", None)
    if capture_signals is not None and not inspect.isgeneratorfunction(inspect.unwrap(capture_signals)):
        missing.append("Server.capture_signals as a context manager")
    if missing:
        raise UvicornMismatch(f"uvicorn {version} lacks what the gateway overrides: {', '.join(missing)}")
