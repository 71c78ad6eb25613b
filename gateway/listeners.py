"""The gateway's listening sockets, and the loop that accepts their connections.

Why not uvicorn's own ``loop.create_server``: under uvloop, libuv accepts *one*
connection per event-loop iteration (libuv 1.45 and later, pull request 3696:
it relies on level-triggered polling to be told about the next one).  A busy
gateway's iteration serves every connection with a request ready, 10-15 ms at
64 clients, so a burst of new connections is accepted one per iteration: the
64th of a burst waited half a second before its first request was even read.
That was the 100-480 ms tail of ``docs/benchmarks.md``.  ``Acceptor`` takes
every connection waiting in the backlog (up to ``ACCEPT_BATCH``) each time the
listening socket is readable, as asyncio's own accept loop does, and hands each
to the event loop with ``connect_accepted_socket``.

Binding is done here too, before the application starts, so a port in use ends
the process with one line; ``reuse_port`` lets several gateway processes each
have their own socket (and accept queue) on one port (``GATEWAY_WORKERS``).
"""

from __future__ import annotations

import asyncio
import errno
import logging
import os
import socket
from collections.abc import Callable
from pathlib import Path

log = logging.getLogger(__name__)

ACCEPT_BATCH = 256
"""Connections accepted per wake-up at most, so a flood cannot hold the loop: the rest wait one iteration."""
PAUSE_ON_EXHAUSTION = 1.0
"""Seconds to stop accepting when the process is out of file descriptors or memory (asyncio does the same)."""
_EXHAUSTED = {errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM}


class ListenError(OSError):
    """A listening socket could not be made; the message names the address."""


def bind_tcp(host: str, port: int, *, backlog: int, reuse_port: bool = False) -> list[socket.socket]:
    """Listening sockets on every address ``host`` resolves to (one for an IP address), all on one port.

    Port 0 picks a free port for the first address and reuses it for the others.
    """
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    except socket.gaierror as exc:
        raise ListenError(f"cannot resolve {host!r}: {exc.strerror}") from None
    sockets: list[socket.socket] = []
    seen: set[tuple[int, object]] = set()
    try:
        for family, kind, proto, _name, address in infos:
            if (family, address[0]) in seen:
                continue
            seen.add((family, address[0]))
            sock = socket.socket(family, kind, proto)
            sockets.append(sock)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            if reuse_port:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
            if family == socket.AF_INET6:
                sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
            if port == 0 and len(sockets) > 1:
                address = (address[0], sockets[0].getsockname()[1], *address[2:])
            try:
                sock.bind(address)
            except OSError as exc:
                raise ListenError(f"cannot listen on {_show(address)}: {exc.strerror}") from None
            sock.listen(backlog)
            sock.setblocking(False)
    except BaseException:
        for sock in sockets:
            sock.close()
        raise
    return sockets


def bind_unix(path: Path, *, backlog: int) -> socket.socket:
    """A listening Unix socket at ``path`` (replacing a stale file), readable by this user only."""
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        path.unlink(missing_ok=True)
        sock.bind(str(path))
        os.chmod(path, 0o600)
        sock.listen(backlog)
        sock.setblocking(False)
    except OSError as exc:
        sock.close()
        raise ListenError(f"cannot listen on {path}: {exc.strerror}") from None
    return sock


def _show(address: tuple[object, ...]) -> str:
    host, port = address[0], address[1]
    return f"[{host}]:{port}" if ":" in str(host) else f"{host}:{port}"


def describe(sock: socket.socket) -> str:
    name = sock.getsockname()
    return _show(name) if isinstance(name, tuple) else str(name)


ProtocolFactory = Callable[[], asyncio.Protocol]


class Acceptor:
    """Serves one listening socket: accepts whatever is waiting each time it is readable.

    Shaped like the ``asyncio.Server`` uvicorn keeps in ``Server.servers``:
    ``close`` stops accepting (and closes this process's copy of the socket),
    ``wait_closed`` waits for connections being handed over.
    """

    def __init__(self, sock: socket.socket, protocol_factory: ProtocolFactory) -> None:
        self.sockets = [sock]
        self._sock = sock
        self._factory = protocol_factory
        self._loop = asyncio.get_running_loop()
        self._tcp = sock.family in (socket.AF_INET, socket.AF_INET6)
        self._adopting: set[asyncio.Task[object]] = set()
        self._resume: asyncio.TimerHandle | None = None
        self._serving = False

    def start(self) -> None:
        self._serving = True
        self._loop.add_reader(self._sock.fileno(), self._accept_waiting)

    def is_serving(self) -> bool:
        return self._serving

    def _accept_waiting(self) -> None:
        for _ in range(ACCEPT_BATCH):
            try:
                conn, _address = self._sock.accept()
            except (BlockingIOError, InterruptedError):
                return
            except OSError as exc:
                if exc.errno in _EXHAUSTED:
                    log.error(
                        "cannot accept connections on %s: %s; pausing %.0f s",
                        describe(self._sock),
                        exc.strerror,
                        PAUSE_ON_EXHAUSTION,
                    )
                    self._loop.remove_reader(self._sock.fileno())
                    self._resume = self._loop.call_later(PAUSE_ON_EXHAUSTION, self.start)
                    return
                continue  # that connection died before it was accepted (ECONNABORTED, EPROTO): take the next
            conn.setblocking(False)
            if self._tcp:
                conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            task = self._loop.create_task(self._adopt(conn))
            self._adopting.add(task)
            task.add_done_callback(self._adopting.discard)

    async def _adopt(self, conn: socket.socket) -> None:
        try:
            await self._loop.connect_accepted_socket(self._factory, conn)
        except OSError as exc:  # the client went away between accept and the transport's set-up
            log.debug("connection dropped while being set up: %s", exc)
            conn.close()

    def close(self) -> None:
        if self._resume is not None:
            self._resume.cancel()
        if self._serving:
            self._serving = False
            self._loop.remove_reader(self._sock.fileno())
        self._sock.close()

    async def wait_closed(self) -> None:
        if self._adopting:
            await asyncio.gather(*self._adopting, return_exceptions=True)
