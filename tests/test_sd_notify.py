"""systemd readiness (Type=notify): each real process says READY=1 once it serves, STOPPING=1 on SIGTERM.

The test plays systemd's part: it binds the notify socket and hands its path to the process in
``$NOTIFY_SOCKET``, exactly as systemd does for a ``Type=notify`` unit.
"""

from __future__ import annotations

import socket
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from shared_schema import sd_notify
from tests.procs import Proc, gateway_proc, http_json, sidecar_proc


@pytest.fixture
def notify_socket(tmp_path: Path) -> Iterator[tuple[socket.socket, str]]:
    path = str(tmp_path / "notify.sock")
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.bind(path)
        sock.settimeout(0.2)
        yield sock, path


def receive_until(sock: socket.socket, wanted: str, timeout: float, proc: Proc | None = None) -> list[str]:
    """Collect notify datagrams until one holds the line ``wanted``; return all lines seen."""
    lines: list[str] = []
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            lines.extend(sock.recv(4096).decode().splitlines())
        except TimeoutError:
            if proc is not None and not proc.alive():
                break
            continue
        if wanted in lines:
            return lines
    raise AssertionError(f"no {wanted} within {timeout}s; got {lines}" + (f"\n{proc.log_tail()}" if proc else ""))


def test_notify_is_a_no_op_without_systemd(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("NOTIFY_SOCKET", raising=False)
    assert sd_notify.notify("READY=1") is False
    monkeypatch.setenv("NOTIFY_SOCKET", "vsock:2:1234")  # a transport this module does not speak
    assert sd_notify.notify("READY=1") is False


def test_notify_reaches_path_and_abstract_sockets(
    notify_socket: tuple[socket.socket, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    sock, path = notify_socket
    monkeypatch.setenv("NOTIFY_SOCKET", path)
    assert sd_notify.notify("READY=1", "STATUS=up") is True
    assert sock.recv(4096) == b"READY=1\nSTATUS=up"
    name = f"mcp-p2p-test-{time.monotonic_ns()}"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as abstract:
        abstract.bind("\0" + name)
        monkeypatch.setenv("NOTIFY_SOCKET", "@" + name)
        assert sd_notify.notify("STOPPING=1") is True
        assert abstract.recv(4096) == b"STOPPING=1"
    monkeypatch.setenv("NOTIFY_SOCKET", str(Path(path).parent / "nobody-listens.sock"))
    assert sd_notify.notify("READY=1") is False  # logged, never raised


@pytest.mark.e2e
def test_sidecar_and_gateway_report_ready_then_stopping(
    notify_socket: tuple[socket.socket, str], tmp_path: Path
) -> None:
    sock, path = notify_socket
    sidecar = sidecar_proc(tmp_path, NOTIFY_SOCKET=path)
    gateway = gateway_proc(tmp_path, endpoint=sidecar.extra["endpoint"], NOTIFY_SOCKET=path)
    try:
        sidecar.start(wait=False)
        lines = receive_until(sock, "READY=1", 30, sidecar)
        # READY=1 is a promise that the service works: the admin port answers at that moment.
        assert http_json("GET", sidecar.health_url)[0] == 200
        assert any(line.startswith("STATUS=") for line in lines)
        gateway.start(wait=False)
        receive_until(sock, "READY=1", 30, gateway)
        assert http_json("GET", gateway.health_url)[0] == 200
        gateway.stop()
        receive_until(sock, "STOPPING=1", 5)
        assert gateway.popen is not None and gateway.popen.returncode == 0
        assert sidecar.stop() == 0
        receive_until(sock, "STOPPING=1", 5)
    finally:
        gateway.stop()
        sidecar.stop()
