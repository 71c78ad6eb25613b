"""Start and stop the real processes for end-to-end tests.

Every process gets free ports, its own data directory and a log file; a test
failure prints the log tail.  Processes are stopped by their pid, always.
"""

from __future__ import annotations

import contextlib
import itertools
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


_PORT_BLOCK = int(os.environ.get("TEST_PORT_BLOCK", "4000"))
_PORT_BASE = int(os.environ.get("TEST_PORT_BASE", "20000"))
"""Ports are handed out below the kernel's ephemeral range (32768 and up here), so an outgoing connection
never takes one between free_port() and the bind, and each pytest-xdist worker gets its own block, so two
workers never hand out the same port.  ``TEST_PORT_BASE`` / ``TEST_PORT_BLOCK`` move the blocks, so that
two test runs on one machine (two checkouts) do not hand out the same ports either."""
_next_port = itertools.count()


def _port_block() -> int:
    worker = os.environ.get("PYTEST_XDIST_WORKER", "gw0").removeprefix("gw")
    index = int(worker) if worker.isdigit() else 0
    return _PORT_BASE + (index % 3) * _PORT_BLOCK


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on now and that this process has not handed out before."""
    base = _port_block()
    for _ in range(_PORT_BLOCK):
        port = base + next(_next_port) % _PORT_BLOCK
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
            try:
                sock.bind(("127.0.0.1", port))
            except OSError:
                continue
            return port
    raise RuntimeError(f"no free port in {base}-{base + _PORT_BLOCK - 1}")


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
    prefix: list[str] = field(default_factory=list)
    """Run through this first, e.g. ``ip netns exec NS`` (which execs, so the pid is still the process's)."""
    cwd: Path = ROOT
    """Where ``python -m`` runs, so whose packages it imports (another checkout's, for an A/B bench)."""

    def start(self, *, wait: bool = True, timeout: float = 30.0) -> Proc:
        self._settle_membership()
        log = self.log_path.open("ab")
        self.popen = subprocess.Popen(
            [*self.prefix, sys.executable, *self.args],
            env=self.env,
            stdout=log,
            stderr=subprocess.STDOUT,
            cwd=self.cwd,
        )
        log.close()
        if wait:
            self.wait_healthy(timeout)
        return self

    def _settle_membership(self) -> None:
        """The helpers' shared test secret steps aside for membership settings a test gave this sidecar."""
        if self.env.get("SIDECAR_NETWORK_SECRET_FILE") == "":  # the test wants the node's own generated secret
            del self.env["SIDECAR_NETWORK_SECRET_FILE"]
            return
        default = self.extra.get("test_secret_file")
        if default is None or self.env.get("SIDECAR_NETWORK_SECRET_FILE") != default:
            return
        opened = self.env.get("SIDECAR_NETWORK_OPEN", "").lower() in ("1", "true", "yes", "on")
        if opened or self.env.get("SIDECAR_NETWORK_SECRET"):
            del self.env["SIDECAR_NETWORK_SECRET_FILE"]

    @property
    def pid(self) -> int:
        assert self.popen is not None
        return self.popen.pid

    def alive(self) -> bool:
        return self.popen is not None and self.popen.poll() is None

    def exit_code(self, timeout: float) -> int:
        """Wait for the process to exit by itself (at most ``timeout`` seconds) and return its exit code."""
        assert self.popen is not None, f"{self.name} was never started"
        return self.popen.wait(timeout=timeout)

    def wait_healthy(self, timeout: float = 30.0, *, status: int = 200) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if not self.alive():
                returncode = self.popen.returncode if self.popen is not None else None
                raise RuntimeError(f"{self.name} exited with {returncode}:\n{self.log_tail()}")
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
            self.exit_code(10)

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
    # A test sidecar's libp2p node listens on a free loopback port, never the shared default 0.0.0.0:4001.
    env["SIDECAR_LISTEN_ADDRS"] = "/ip4/127.0.0.1/tcp/0"
    env.update(overrides)
    return env


TEST_NETWORK_SECRET = b"the test networks' shared secret, 42 bytes"
"""Every sidecar these helpers start holds this network secret (in ``<tmp>/test-network.secret``), so sidecars
started by one test form one closed network, as nodes configured alike do; a test that wants another secret,
an open network, or a node's own generated secret sets the variables itself (``SIDECAR_NETWORK_SECRET_FILE``,
``SIDECAR_NETWORK_SECRET``, ``SIDECAR_NETWORK_OPEN=true``, or ``SIDECAR_NETWORK_SECRET_FILE=""`` for the node's own),
and the helper's default steps aside (see ``Proc.start``)."""


def test_secret_file(tmp: Path) -> Path:
    path = tmp / "test-network.secret"
    if not path.exists():
        tmp.mkdir(parents=True, exist_ok=True)
        path.write_bytes(TEST_NETWORK_SECRET + b"\n")
        path.chmod(0o600)
    return path


def sidecar_proc(tmp: Path, name: str = "sidecar", *, endpoint: str | None = None, **env: str) -> Proc:
    """A sidecar on free ports; its libp2p node listens on a fixed loopback port, so a restart keeps its address.

    It holds the test networks' shared secret unless ``env`` (or the test, before the start) says otherwise.
    """
    admin_port = free_port()
    p2p_port = free_port()
    endpoint = endpoint or f"tcp://127.0.0.1:{free_port()}"
    data_dir = tmp / f"{name}-data"
    secret_file = str(test_secret_file(tmp))
    settings = {
        "SIDECAR_BRIDGE_ENDPOINT": endpoint,
        "SIDECAR_ADMIN_PORT": str(admin_port),
        "SIDECAR_DATA_DIR": str(data_dir),
        "SIDECAR_LISTEN_ADDRS": f"/ip4/127.0.0.1/tcp/{p2p_port}",
        "SIDECAR_NETWORK_SECRET_FILE": secret_file,
        "SIDECAR_WORKER_TEST_TASK_TYPES": "true",  # the fail task type, for tests that fail tasks on purpose
    }
    settings.update(env)
    return Proc(
        name,
        ["-m", "p2p_sidecar"],
        base_env(**settings),
        tmp / f"{name}.log",
        f"http://127.0.0.1:{admin_port}/health",
        extra={
            "endpoint": endpoint,
            "admin_port": admin_port,
            "data_dir": data_dir,
            "p2p_port": p2p_port,
            "test_secret_file": secret_file,
        },
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


def metric_value(url: str, name: str) -> float:
    """The sum of a metric's samples (``name`` alone or with labels) at a /metrics URL; 0 if it has none."""
    _, text = http_json("GET", url)
    samples = [line for line in text.splitlines() if line.startswith((f"{name} ", f"{name}{{"))]
    return sum(float(line.rsplit(" ", 1)[1]) for line in samples)


def start_all(*procs: Proc, timeout: float = 30.0) -> None:
    """Start several processes at once and wait until each is healthy (faster than one by one)."""
    for proc in procs:
        proc.start(wait=False)
    for proc in procs:
        proc.wait_healthy(timeout)


# -- libp2p networks of sidecars ------------------------------------------------------------------------------

FAST_P2P = {
    "SIDECAR_PEER_PING_INTERVAL": "0.5",
    "SIDECAR_PEER_GONE_TIMEOUT": "3",
    "SIDECAR_PEER_EXCHANGE_INTERVAL": "1",
    "SIDECAR_REDIAL_MAX_BACKOFF": "2",
}
"""Liveness and discovery timings for tests: a dead peer is gone within about 3.5 s."""


def make_identity(data_dir: Path) -> str:
    """Create a node key in ``data_dir`` ahead of the start, so every peer id is known before any process runs."""
    from p2p_sidecar.node.identity import load_or_create
    from p2p_sidecar.node.libp2p_host import peer_id_of

    data_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
    key_pair, _ = load_or_create(data_dir)
    return peer_id_of(key_pair)


@dataclass
class Peer:
    """One node of a test network: its sidecar, its gateway if it has one, and how to reach it."""

    name: str
    sidecar: Proc
    peer_id: str
    gateway: Proc | None = None
    host: str = "127.0.0.1"
    """Where its sockets listen (another address in a network namespace)."""

    @property
    def multiaddr(self) -> str:
        return f"/ip4/{self.host}/tcp/{self.sidecar.extra['p2p_port']}/p2p/{self.peer_id}"

    @property
    def admin(self) -> str:
        return f"http://{self.host}:{self.sidecar.extra['admin_port']}"

    def procs(self) -> list[Proc]:
        return [self.sidecar] + ([self.gateway] if self.gateway else [])

    def tool(self, name: str, arguments: dict[str, Any] | None = None) -> tuple[int, Any]:
        """Call a tool through this node's gateway's REST face."""
        assert self.gateway is not None, f"{self.name} has no gateway"
        return http_json("POST", f"{self.gateway.extra['url']}/tools/execute/{name}", arguments or {}, timeout=60)

    def peers(self, **filters: Any) -> dict[str, dict[str, Any]]:
        status, body = self.tool("peer_list", filters)
        assert status == 200, body
        return {entry["peer_id"]: entry for entry in body["result"]["peers"]}

    def status_of(self, other: Peer) -> str | None:
        entry = self.peers().get(other.peer_id)
        return entry["status"] if entry else None

    def wait_connected(self, others: list[Peer], timeout: float = 30.0) -> dict[str, dict[str, Any]]:
        """Wait until every one of ``others`` is connected with a measured latency; returns the connected peers."""
        wanted = {other.peer_id for other in others}

        def ready() -> dict[str, dict[str, Any]] | None:
            found = self.peers(status_filter="connected")
            done = wanted <= set(found) and all(found[peer]["latency_ms"] is not None for peer in wanted)
            return found if done else None

        names = sorted(other.name for other in others)
        return wait_for(ready, timeout, 0.2, what=f"{self.name} connected to {names}")

    def metric(self, name: str) -> float:
        """The sum of a metric's samples on this sidecar's /metrics."""
        _, text = http_json("GET", self.admin + "/metrics")
        return sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines() if line.startswith(name))


def p2p_network(
    tmp: Path,
    names: list[str],
    *,
    bootstrap: dict[str, list[str]] | None = None,
    gateways: tuple[str, ...] = (),
    env: dict[str, dict[str, str]] | None = None,
    gateway_env: dict[str, str] | None = None,
    **common: str,
) -> dict[str, Peer]:
    """Sidecars (not started) that bootstrap from each other by name, each with its own identity and ports."""
    peers: dict[str, Peer] = {}
    for name in names:
        peer_id = make_identity(tmp / f"{name}-data")
        peers[name] = Peer(name, sidecar_proc(tmp, name), peer_id)
    for name, peer in peers.items():
        settings = {**FAST_P2P, **common, **(env or {}).get(name, {})}
        targets = (bootstrap or {}).get(name, [])
        if targets:
            settings["SIDECAR_BOOTSTRAP_PEERS"] = ",".join(peers[target].multiaddr for target in targets)
        peer.sidecar.env.update(settings)
        if name in gateways:
            endpoint = peer.sidecar.extra["endpoint"]
            peer.gateway = gateway_proc(tmp, f"{name}-gateway", endpoint=endpoint, **(gateway_env or {}))
    return peers


@contextlib.contextmanager
def running_network(peers: dict[str, Peer]) -> Iterator[dict[str, Peer]]:
    """Start every sidecar and gateway at once, wait until the gateways have the sidecar's catalog, stop all after."""
    procs = [proc for peer in peers.values() for proc in peer.procs()]
    try:
        start_all(*procs, timeout=60)
        for peer in peers.values():
            if peer.gateway is not None:
                peer.gateway.health_url = peer.gateway.extra["url"] + "/health/ready"
                peer.gateway.wait_healthy(30)
        yield peers
    finally:
        for proc in reversed(procs):
            proc.stop()
