"""The systemd units' commands, run as systemd would run them, but as plain processes on loopback.

There is no systemd as PID 1 here, so this test does the part of systemd the units rely on:
it reads each unit's ``ExecStart=``, ``Environment=``, ``EnvironmentFile=`` and
``StateDirectory=``; expands the specifiers used (``%S``); starts the process with only that
environment (plus ``$NOTIFY_SOCKET`` and ``$STATE_DIRECTORY``, as systemd adds them), in ``/``;
waits for ``READY=1`` (``Type=notify``) before starting what is ordered ``After=`` it; and stops
with SIGTERM in the reverse order.  Two things are mapped to this machine, and nothing else:
the install prefix ``/opt/mcp-p2p/venv`` becomes this checkout's virtualenv, and
``/etc/mcp-p2p/mcp-p2p.env`` becomes a copy of ``deploy/systemd/mcp-p2p.env`` whose ports are
free ones (and whose token is the test's).  Sandboxing directives are not exercised here
(``make test`` checks them with ``systemd-analyze verify``).
"""

from __future__ import annotations

import re
import shlex
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from harness import DEPLOY, http_get, mcp_p2p_calls, record, rest_call, wait_http

from tests.procs import free_port

UNITS = DEPLOY / "systemd"
PREFIX = "/opt/mcp-p2p/venv"
ENV_FILE = "/etc/mcp-p2p/mcp-p2p.env"
TOKEN = "systemd-" + "00112233445566778899" * 2
SYSTEMD_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"


@dataclass
class Unit:
    name: str
    settings: dict[str, list[str]] = field(default_factory=dict)

    @classmethod
    def load(cls, path: Path) -> Unit:
        unit = cls(path.name)
        for raw in path.read_text().splitlines():
            line = raw.strip()
            if line and not line.startswith(("#", ";", "[")):
                key, _, value = line.partition("=")
                unit.settings.setdefault(key.strip(), []).append(value.strip())
        return unit

    def get(self, key: str) -> list[str]:
        return self.settings.get(key, [])


def parse_env_file(text: str) -> dict[str, str]:
    """systemd's EnvironmentFile= format: KEY=VALUE lines, # or ; comments, optional quotes."""
    env = {}
    for raw in text.splitlines():
        line = raw.strip()
        if not line or line.startswith(("#", ";")):
            continue
        key, _, value = line.partition("=")
        value = value.strip()
        if len(value) >= 2 and value[0] == value[-1] and value[0] in "'\"":
            value = value[1:-1]
        env[key.strip()] = value
    return env


class Systemd:
    """Just enough of systemd's service manager for these two units."""

    def __init__(self, tmp: Path, env_file: Path) -> None:
        self.tmp = tmp
        self.state_root = tmp / "var-lib"  # %S
        self.state_root.mkdir()
        self.env_file = env_file
        self.notify_path = str(tmp / "notify.sock")
        self.notify = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.notify.bind(self.notify_path)
        self.notify.settimeout(0.2)
        self.procs: dict[str, subprocess.Popen[bytes]] = {}
        self.logs: dict[str, Path] = {}

    def expand(self, value: str) -> str:
        return re.sub(r"%([S%])", lambda m: str(self.state_root) if m[1] == "S" else "%", value)

    def environment(self, unit: Unit) -> dict[str, str]:
        env = {"PATH": SYSTEMD_PATH, "LANG": "C.UTF-8", "NOTIFY_SOCKET": self.notify_path}
        for path in unit.get("EnvironmentFile"):
            optional = path.startswith("-")
            path = path.lstrip("-")
            assert path == ENV_FILE, f"{unit.name}: unexpected EnvironmentFile {path}"
            if self.env_file.exists() or not optional:
                env.update(parse_env_file(self.env_file.read_text()))
        for assignments in unit.get("Environment"):  # later lines win, as in systemd
            for assignment in shlex.split(assignments):
                key, _, value = assignment.partition("=")
                env[key] = self.expand(value)
        for name in " ".join(unit.get("StateDirectory")).split():
            directory = self.state_root / name
            directory.mkdir(exist_ok=True)  # kept across restarts, mode (re)applied at each start
            directory.chmod(int((unit.get("StateDirectoryMode") or ["0755"])[0], 8))
            env["STATE_DIRECTORY"] = str(directory)
        return env

    def start(self, unit: Unit) -> None:
        argv = shlex.split(self.expand(unit.get("ExecStart")[0]))
        assert argv[0].startswith(PREFIX + "/bin/"), argv
        argv[0] = str(Path(sys.executable).parent / argv[0][len(PREFIX + "/bin/") :])
        self.logs[unit.name] = self.tmp / f"{unit.name}.log"
        with self.logs[unit.name].open("ab") as log:
            self.procs[unit.name] = subprocess.Popen(
                argv, env=self.environment(unit), cwd="/", stdout=log, stderr=subprocess.STDOUT
            )
        if unit.get("Type") == ["notify"]:
            self.wait_notify(unit, "READY=1", float(unit.get("TimeoutStartSec")[0].rstrip("s")))

    def wait_notify(self, unit: Unit, wanted: str, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                if wanted in self.notify.recv(4096).decode().splitlines():
                    return
            except TimeoutError:
                if self.procs[unit.name].poll() is not None:
                    break
        raise AssertionError(f"{unit.name}: no {wanted} within {timeout}s:\n{self.log(unit)}")

    def stop(self, unit: Unit) -> int:
        proc = self.procs[unit.name]
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout=float(unit.get("TimeoutStopSec")[0].rstrip("s")))
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(10)
        return proc.returncode

    def log(self, unit: Unit) -> str:
        return self.logs[unit.name].read_text(errors="replace")[-3000:]

    def close(self) -> None:
        for proc in self.procs.values():
            if proc.poll() is None:
                proc.kill()
                proc.wait(10)
        self.notify.close()


@pytest.fixture
def units(tmp_path: Path) -> Iterator[tuple[Systemd, Unit, Unit, dict[str, Any]]]:
    ports = {"http": free_port(), "bridge": free_port(), "admin": free_port(), "libp2p": free_port()}
    env = parse_env_file((UNITS / "mcp-p2p.env").read_text())
    env.update(
        GATEWAY_PORT=str(ports["http"]),
        GATEWAY_AUTH_TOKEN=TOKEN,
        GATEWAY_BRIDGE_ENDPOINT=env["GATEWAY_BRIDGE_ENDPOINT"].rsplit(":", 1)[0] + f":{ports['bridge']}",
        SIDECAR_BRIDGE_ENDPOINT=env["SIDECAR_BRIDGE_ENDPOINT"].rsplit(":", 1)[0] + f":{ports['bridge']}",
        SIDECAR_ADMIN_PORT=str(ports["admin"]),
        SIDECAR_LISTEN_ADDRS=env["SIDECAR_LISTEN_ADDRS"].rsplit("/", 1)[0] + f"/{ports['libp2p']}",
    )
    env_file = tmp_path / "mcp-p2p.env"
    env_file.write_text("".join(f"{key}={value}\n" for key, value in env.items()))
    manager = Systemd(tmp_path, env_file)
    sidecar = Unit.load(UNITS / "mcp-p2p-sidecar.service")
    gateway = Unit.load(UNITS / "mcp-p2p-gateway.service")
    try:
        yield manager, sidecar, gateway, {**ports, "env": env}
    finally:
        manager.close()


def test_units_start_in_order_serve_an_mcp_call_and_stop_cleanly(
    units: tuple[Systemd, Unit, Unit, dict[str, Any]],
) -> None:
    manager, sidecar, gateway, ports = units
    assert "mcp-p2p-sidecar.service" in " ".join(gateway.get("After"))  # so the sidecar goes first
    started = time.monotonic()
    manager.start(sidecar)
    manager.start(gateway)
    url = f"http://{ports['env']['GATEWAY_HOST']}:{ports['http']}"
    wait_http(url + "/health/ready", 30, what="gateway /health/ready")
    record("systemd units: sidecar + gateway start -> ready", f"{time.monotonic() - started:.1f} s")
    admin = f"http://127.0.0.1:{ports['admin']}/health"
    before = http_get(admin)[1]["bridge"]["handled_calls"]
    mcp_p2p_calls(url, TOKEN)
    assert http_get(admin)[1]["bridge"]["handled_calls"] >= before + 4
    # The sidecar's state directory is the one systemd made for StateDirectory=, with its mode.
    data_dir = manager.state_root / "mcp-p2p"
    assert data_dir.is_dir() and (data_dir.stat().st_mode & 0o777) == 0o700
    assert http_get(admin)[1]["status"] == "ok"

    # systemctl stop: the gateway first (it is ordered after the sidecar), each with SIGTERM;
    # each tells systemd it is stopping, then exits 0 (a clean stop, not a failure).
    for unit in (gateway, sidecar):
        assert manager.stop(unit) == 0, manager.log(unit)
        manager.wait_notify(unit, "STOPPING=1", 1)


def test_gateway_stays_up_and_unready_while_the_sidecar_is_down(
    units: tuple[Systemd, Unit, Unit, dict[str, Any]],
) -> None:
    # Wants=, not Requires=/BindsTo=: losing the sidecar does not stop the gateway; Restart=on-failure
    # brings the sidecar back, and the gateway reconnects by itself.
    manager, sidecar, gateway, ports = units
    assert gateway.get("Requires") == [] and gateway.get("BindsTo") == [] and sidecar.get("Restart") == ["on-failure"]
    manager.start(sidecar)
    manager.start(gateway)
    url = f"http://127.0.0.1:{ports['http']}"
    wait_http(url + "/health/ready", 30)
    manager.procs[sidecar.name].kill()  # a crash: the kind of exit Restart=on-failure restarts
    manager.procs[sidecar.name].wait(10)
    wait_http(url + "/health/ready", 15, status=503, what="gateway unready without its sidecar")
    assert http_get(url + "/health")[0] == 200 and manager.procs[gateway.name].poll() is None
    status, body = rest_call(url, "p2p_echo", {"message": "nobody home"}, TOKEN)
    assert status == 503, body
    manager.start(sidecar)  # what Restart=on-failure does after RestartSec=
    wait_http(url + "/health/ready", 30, what="gateway ready again after the sidecar restarted")
    status, body = rest_call(url, "p2p_echo", {"message": "back"}, TOKEN)
    assert status == 200 and body["result"]["message"] == "back", body
    assert manager.stop(gateway) == 0 and manager.stop(sidecar) == 0


def test_a_second_host_joins_the_closed_network_with_the_lines_join_prints(
    units: tuple[Systemd, Unit, Unit, dict[str, Any]], tmp_path: Path
) -> None:
    # Host 1 as installed: no secret configured, so its sidecar makes one on first start. Host 2 (here a second
    # set of processes with ports of its own) gets the two lines `python -m p2p_sidecar join` prints on host 1,
    # run the way the env file's comment says.
    manager, sidecar, gateway, ports = units
    manager.start(sidecar)
    manager.start(gateway)
    url = f"http://127.0.0.1:{ports['http']}"
    wait_http(url + "/health/ready", 30)
    data_dir = manager.state_root / "mcp-p2p"
    join = subprocess.run(
        [sys.executable, "-m", "p2p_sidecar", "join", "--env-file", str(manager.env_file), "--data-dir", str(data_dir)],
        capture_output=True, text=True, timeout=60, env={"PATH": SYSTEMD_PATH},
    )  # fmt: skip
    assert join.returncode == 0, join.stderr
    lines = [line for line in join.stdout.splitlines() if line and not line.startswith("#")]
    assert [line.split("=", 1)[0] for line in lines] == ["SIDECAR_NETWORK_SECRET", "SIDECAR_BOOTSTRAP_PEERS"], lines
    assert lines[0].split("=", 1)[1] == (data_dir / "network.secret").read_text().strip()

    second = tmp_path / "host2"
    second.mkdir()
    env2 = dict(ports["env"])
    http2, bridge2, admin2, libp2p2 = free_port(), free_port(), free_port(), free_port()
    env2.update(
        GATEWAY_PORT=str(http2),
        GATEWAY_BRIDGE_ENDPOINT=f"tcp://127.0.0.1:{bridge2}",
        SIDECAR_BRIDGE_ENDPOINT=f"tcp://127.0.0.1:{bridge2}",
        SIDECAR_ADMIN_PORT=str(admin2),
        SIDECAR_LISTEN_ADDRS=f"/ip4/0.0.0.0/tcp/{libp2p2}",
    )
    env2.update(dict(line.split("=", 1) for line in lines))
    env_file2 = second / "mcp-p2p.env"
    env_file2.write_text("".join(f"{key}={value}\n" for key, value in env2.items()))
    host2 = Systemd(second, env_file2)
    try:
        host2.start(sidecar)
        host2.start(gateway)
        url2 = f"http://127.0.0.1:{http2}"
        wait_http(url2 + "/health/ready", 30)
        node1 = http_get(f"http://127.0.0.1:{ports['admin']}/health")[1]["node"]["peer_id"]
        node2 = http_get(f"http://127.0.0.1:{admin2}/health")[1]["node"]["peer_id"]
        deadline = time.monotonic() + 30
        while True:
            status, body = rest_call(url, "peer_list", {"status_filter": "connected"}, TOKEN)
            members = {peer["peer_id"] for peer in body["result"]["peers"] if peer["member"]}
            if node2 in members:
                break
            assert time.monotonic() < deadline, f"host 2 never became a member of host 1's network: {body}"
            time.sleep(0.3)
        status, body = rest_call(url2, "p2p_remote_call_tool", {"tool_name": "echo", "remote_peer_id": node1}, TOKEN)
        # host 1 serves no tool to peers (SIDECAR_REMOTE_TOOLS_ALLOW is empty): a member is told so, not refused
        assert status == 403 and "SIDECAR_REMOTE_TOOLS_ALLOW" in body and "has not proven" not in body, body
        pinned = {"task_type": "echo", "payload": "on host 2", "metadata": {"placement": {"peer": node2}}}
        status, body = rest_call(url, "task_submit", pinned, TOKEN)
        assert status == 200, body
        status, body = rest_call(url, "task_wait", {"task_id": body["result"]["task_id"], "timeout_s": 20}, TOKEN)
        assert body["result"]["status"] == "completed" and body["result"]["executed_by"] == node2, body
        for unit in (gateway, sidecar):
            assert host2.stop(unit) == 0, host2.log(unit)
    finally:
        host2.close()
    for unit in (gateway, sidecar):
        assert manager.stop(unit) == 0, manager.log(unit)
