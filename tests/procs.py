"""Start and stop the real processes for end-to-end tests.

Every process gets free ports, its own data directory and a log file; a test
failure prints the log tail.  Processes are stopped by their pid, always.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def http_json(
    method: str, url: str, body: Any = None, *, timeout: float = 10.0, headers: dict[str, str] | None = None
) -> tuple[int, Any]:
    """A plain HTTP call returning (status, parsed JSON or text)."""
    data = None if body is None else (body if isinstance(body, bytes) else json.dumps(body).encode())
    request = urllib.request.Request(url, data=data, method=method)
    request.add_header("content-type", "application/json")
    for key, value in (headers or {}).items():
        request.add_header(key, value)
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            raw = response.read()
            status = response.status
    except urllib.error.HTTPError as exc:
        raw = exc.read()
        status = exc.code
    try:
        return status, json.loads(raw)
    except ValueError:
        return status, raw.decode(errors="replace")


@dataclass
class Proc:
    """One running gateway or sidecar."""

    name: str
    args: list[str]
    env: dict[str, str]
    log_path: Path
    health_url: str
    popen: subprocess.Popen[bytes] | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    def start(self, *, wait: bool = True, timeout: float = 30.0) -> Proc:
        log = self.log_path.open("ab")
        self.popen = subprocess.Popen(
            [sys.executable, *self.args], env=self.env, stdout=log, stderr=subprocess.STDOUT, cwd=ROOT
        )
        log.close()
        if wait:
            self.wait_healthy(timeout)
        return self

    @property
    def pid(self) -> int:
        assert self.popen is not None
        return self.popen.pid

    def alive(self) -> bool:
        return self.popen is not None and self.popen.poll() is None

    def wait_healthy(self, timeout: float = 30.0, *, status: int = 200) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if not self.alive():
                raise RuntimeError(f"{self.name} exited with {self.popen.returncode}:\n{self.log_tail()}")  # type: ignore[union-attr]
            try:
                code, _ = http_json("GET", self.health_url, timeout=1.0)
                if code == status:
                    return
            except OSError:
                pass
            time.sleep(0.05)
        raise TimeoutError(f"{self.name} not healthy at {self.health_url} within {timeout}s:\n{self.log_tail()}")

    def log_tail(self, lines: int = 40) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return "(no log)"

    def signal(self, signum: int) -> None:
        if self.alive():
            os.kill(self.pid, signum)

    def kill9(self) -> None:
        if self.alive():
            os.kill(self.pid, signal.SIGKILL)
            self.popen.wait(timeout=10)  # type: ignore[union-attr]

    def stop(self, timeout: float = 15.0) -> int | None:
        if self.popen is None:
            return None
        if self.alive():
            self.popen.send_signal(signal.SIGTERM)
            try:
                self.popen.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                self.popen.kill()
                self.popen.wait(timeout=10)
        return self.popen.returncode


def base_env(**overrides: str) -> dict[str, str]:
    env = {key: value for key, value in os.environ.items() if not key.startswith(("GATEWAY_", "SIDECAR_"))}
    env["PYTHONUNBUFFERED"] = "1"
    env.update(overrides)
    return env


def sidecar_proc(tmp: Path, name: str = "sidecar", *, endpoint: str | None = None, **env: str) -> Proc:
    admin_port = free_port()
    endpoint = endpoint or f"tcp://127.0.0.1:{free_port()}"
    data_dir = tmp / f"{name}-data"
    full_env = base_env(
        SIDECAR_BRIDGE_ENDPOINT=endpoint,
        SIDECAR_ADMIN_PORT=str(admin_port),
        SIDECAR_DATA_DIR=str(data_dir),
        **env,
    )
    return Proc(
        name,
        ["-m", "p2p_sidecar"],
        full_env,
        tmp / f"{name}.log",
        f"http://127.0.0.1:{admin_port}/health",
        extra={"endpoint": endpoint, "admin_port": admin_port, "data_dir": data_dir},
    )


def gateway_proc(tmp: Path, name: str = "gateway", *, endpoint: str | None = None, **env: str) -> Proc:
    port = free_port()
    settings = {"GATEWAY_PORT": str(port)}
    if endpoint is None:
        settings["GATEWAY_BRIDGE_ENABLED"] = "false"
    else:
        settings["GATEWAY_BRIDGE_ENDPOINT"] = endpoint
    settings.update(env)
    return Proc(
        name,
        ["-m", "gateway"],
        base_env(**settings),
        tmp / f"{name}.log",
        f"http://127.0.0.1:{port}/health",
        extra={"port": port, "url": f"http://127.0.0.1:{port}"},
    )


@contextlib.contextmanager
def running(*procs: Proc) -> Iterator[tuple[Proc, ...]]:
    """Start in order, stop in reverse order, even when the test fails."""
    started: list[Proc] = []
    try:
        for proc in procs:
            started.append(proc.start())
        yield procs
    finally:
        for proc in reversed(started):
            proc.stop()


def wait_for(predicate: Any, timeout: float = 10.0, interval: float = 0.05, what: str = "condition") -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(interval)
    raise TimeoutError(f"{what} not met within {timeout}s")
