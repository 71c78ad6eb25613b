"""The deployment files in deploy/ are valid for the tools that will read them, and agree with the code.

Fast and offline: the validators ship their schemas (kubernetes-validate, check-jsonschema's
vendored Compose specification, hadolint's rules, systemd-analyze).  Each validator is also
shown a broken copy, so a check that silently passes everything would fail here.  Running the
files for real (image, pod, compose, units) is ``make test-deploy``.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from gateway.settings import GatewaySettings
from p2p_sidecar.settings import SidecarSettings
from tests.ci import cannot_run

ROOT = Path(__file__).resolve().parent.parent
DEPLOY = ROOT / "deploy"
BIN = Path(sys.executable).parent
K8S_FILES = sorted((DEPLOY / "kubernetes").glob("*.yaml"))
COMPOSE = DEPLOY / "docker-compose.yml"
UNITS = sorted((DEPLOY / "systemd").glob("*.service"))
ENV_FILE = DEPLOY / "systemd" / "mcp-p2p.env"
UNIT_PYTHON = "/opt/mcp-p2p/venv/bin/python"


def run(*args: str | Path, cwd: Path = ROOT) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(arg) for arg in args], capture_output=True, text=True, cwd=cwd, timeout=120)


def k8s_docs() -> dict[str, dict[str, Any]]:
    docs: dict[str, dict[str, Any]] = {}
    for path in K8S_FILES:
        for doc in yaml.safe_load_all(path.read_text()):
            docs[f"{doc['kind']}/{doc['metadata']['name']}"] = doc
    return docs


def known_setting(name: str) -> bool:
    for prefix, settings in (("GATEWAY_", GatewaySettings), ("SIDECAR_", SidecarSettings)):
        if name.startswith(prefix):
            return name[len(prefix) :].lower() in settings.model_fields
    return False


def assert_settings_valid(env: dict[str, str], monkeypatch: pytest.MonkeyPatch, where: str) -> None:
    """Every GATEWAY_/SIDECAR_ name is a real setting (a typo would be ignored silently) and parses."""
    ours = {key: value for key, value in env.items() if key.startswith(("GATEWAY_", "SIDECAR_"))}
    unknown = sorted(key for key in ours if not known_setting(key))
    assert not unknown, f"{where}: not settings of either process: {unknown}"
    for key, value in ours.items():
        monkeypatch.setenv(key, value)
    GatewaySettings()
    SidecarSettings()


def parse_env_file(path: Path) -> dict[str, str]:
    env: dict[str, str] = {}
    for line in path.read_text().splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            key, _, value = line.partition("=")
            env[key.strip()] = value.strip()
    return env


def unit_values(path: Path, key: str) -> list[str]:
    return [line.split("=", 1)[1] for line in path.read_text().splitlines() if line.startswith(f"{key}=")]


def seconds(value: str) -> float:
    match = re.fullmatch(r"(\d+(?:\.\d+)?)(s|m)?", value.strip())
    assert match, value
    return float(match[1]) * (60 if match[2] == "m" else 1)


# -- Kubernetes -------------------------------------------------------------------------------


def test_kubernetes_manifests_pass_strict_schema_validation() -> None:
    for version in ("1.37.0", "1.28.0"):  # the newest schema shipped, and an older cluster still common
        result = run(BIN / "kubernetes-validate", "--strict", "-k", version, *K8S_FILES)
        assert result.returncode == 0, result.stdout + result.stderr
        assert result.stdout.count("passed") == 5, result.stdout


def test_kubernetes_validation_rejects_a_misspelt_field(tmp_path: Path) -> None:
    broken = tmp_path / "statefulset.yaml"
    broken.write_text(
        (DEPLOY / "kubernetes" / "statefulset.yaml").read_text().replace("readinessProbe:", "readyProbe:")
    )
    result = run(BIN / "kubernetes-validate", "--strict", broken)
    assert result.returncode != 0 and "readyProbe" in result.stdout + result.stderr


def test_kubernetes_pod_is_wired_the_way_the_processes_read_it(monkeypatch: pytest.MonkeyPatch) -> None:
    docs = k8s_docs()
    config = docs["ConfigMap/mcp-p2p"]["data"]
    # SIDECAR_ADMIN_TOKEN comes from the Secret (checked below): the admin port is not loopback-only
    assert_settings_valid({**config, "SIDECAR_ADMIN_TOKEN": "x" * 32}, monkeypatch, "ConfigMap mcp-p2p")
    # The bridge stays on the pod's shared loopback; both ends name the same endpoint.
    assert config["GATEWAY_BRIDGE_ENDPOINT"] == config["SIDECAR_BRIDGE_ENDPOINT"]
    assert config["SIDECAR_BRIDGE_ENDPOINT"].startswith("tcp://127.0.0.1:")
    # The kubelet probes the pod IP, so the admin port cannot be loopback-only.
    assert config["SIDECAR_ADMIN_HOST"] == "0.0.0.0" and config["GATEWAY_HOST"] == "0.0.0.0"
    assert config["GATEWAY_WORKERS"] == "1"  # more only with a larger cpu limit for the gateway container

    sts = docs["StatefulSet/mcp-p2p"]
    pod = sts["spec"]["template"]["spec"]
    containers = {c["name"]: c for c in pod["containers"]}
    assert set(containers) == {"gateway", "sidecar"}
    assert containers["gateway"]["command"] == ["python", "-m", "gateway"]
    assert containers["sidecar"]["command"] == ["python", "-m", "p2p_sidecar"]
    probes = {
        (name, kind): container[kind]["httpGet"]
        for name, container in containers.items()
        for kind in ("startupProbe", "readinessProbe", "livenessProbe")
    }
    assert probes["gateway", "readinessProbe"] == {"path": "/health/ready", "port": int(config["GATEWAY_PORT"])}
    assert probes["gateway", "livenessProbe"] == {"path": "/health", "port": int(config["GATEWAY_PORT"])}
    for kind in ("readinessProbe", "livenessProbe"):
        assert probes["sidecar", kind] == {"path": "/health", "port": int(config["SIDECAR_ADMIN_PORT"])}
    ports = {port["name"]: port["containerPort"] for c in containers.values() for port in c["ports"]}
    assert ports == {"http": int(config["GATEWAY_PORT"]), "libp2p": 4001, "admin": int(config["SIDECAR_ADMIN_PORT"])}
    assert config["SIDECAR_LISTEN_ADDRS"].endswith(f"/tcp/{ports['libp2p']}")
    services = {name: doc for name, doc in docs.items() if name.startswith("Service/")}
    assert {p["targetPort"] for doc in services.values() for p in doc["spec"]["ports"]} == {"http", "libp2p"}
    assert docs["Service/mcp-p2p-peers"]["spec"]["clusterIP"] == "None"
    assert sts["spec"]["serviceName"] == "mcp-p2p-peers"

    # Draining fits in the grace period: the sidecar's grace, and the gateway's preStop + grace.
    grace = pod["terminationGracePeriodSeconds"]
    assert float(config["SIDECAR_SHUTDOWN_GRACE_SECONDS"]) < grace
    pre_stop = int(containers["gateway"]["lifecycle"]["preStop"]["exec"]["command"][1])
    assert pre_stop + float(config["GATEWAY_GRACEFUL_SHUTDOWN_SECONDS"]) < grace

    # Non-root, read-only root: so /tmp and the data directory must be volumes.
    assert pod["securityContext"]["runAsNonRoot"] is True and pod["securityContext"]["runAsUser"] != 0
    token = containers["gateway"]["env"][0]
    assert token["name"] == "GATEWAY_AUTH_TOKEN" and token["valueFrom"]["secretKeyRef"]["name"] == "mcp-p2p-auth"
    sidecar_env = {var["name"]: var for var in containers["sidecar"]["env"]}
    assert sidecar_env["SIDECAR_ADMIN_TOKEN"]["valueFrom"]["secretKeyRef"] == {"name": "mcp-p2p-auth", "key": "token"}
    for container in containers.values():
        context = container["securityContext"]
        assert context["readOnlyRootFilesystem"] is True and context["allowPrivilegeEscalation"] is False
        assert set(container["resources"]) == {"requests", "limits"}
        mounts = {mount["mountPath"] for mount in container["volumeMounts"]}
        assert "/tmp" in mounts
    sidecar_mounts = {m["mountPath"]: m["name"] for m in containers["sidecar"]["volumeMounts"]}
    assert sidecar_mounts[config["SIDECAR_DATA_DIR"]] == sts["spec"]["volumeClaimTemplates"][0]["metadata"]["name"]


def test_kubernetes_replicas_form_one_closed_network() -> None:
    docs = k8s_docs()
    config = docs["ConfigMap/mcp-p2p"]["data"]
    sts = docs["StatefulSet/mcp-p2p"]
    replicas = sts["spec"]["replicas"]
    assert replicas == 2
    # every replica's stable name (pod N of the StatefulSet, under its headless Service) is a bootstrap peer
    service = sts["spec"]["serviceName"]
    names = {f"/dns4/{sts['metadata']['name']}-{n}.{service}/tcp/4001" for n in range(replicas)}
    assert set(config["SIDECAR_BOOTSTRAP_PEERS"].split(",")) == names
    assert "SIDECAR_NETWORK_OPEN" not in config
    # the same secret for all of them, from the Secret
    sidecar = next(c for c in sts["spec"]["template"]["spec"]["containers"] if c["name"] == "sidecar")
    [secret] = [var for var in sidecar["env"] if var["name"] == "SIDECAR_NETWORK_SECRET"]
    ref = secret["valueFrom"]["secretKeyRef"]
    assert ref["key"] in docs[f"Secret/{ref['name']}"]["stringData"]


# -- Compose --------------------------------------------------------------------------------------


def test_compose_file_passes_the_compose_specification_schema() -> None:
    result = run(BIN / "check-jsonschema", "--builtin-schema", "vendor.compose-spec", COMPOSE)
    assert result.returncode == 0, result.stdout + result.stderr


def test_compose_validation_rejects_a_misspelt_key(tmp_path: Path) -> None:
    broken = tmp_path / "docker-compose.yml"
    broken.write_text(COMPOSE.read_text().replace("healthcheck:", "healtcheck:", 1))
    result = run(BIN / "check-jsonschema", "--builtin-schema", "vendor.compose-spec", broken)
    assert result.returncode != 0 and "healtcheck" in result.stdout + result.stderr


def test_compose_services_are_wired_the_way_the_processes_read_them(monkeypatch: pytest.MonkeyPatch) -> None:
    compose = yaml.safe_load(COMPOSE.read_text())
    services = compose["services"]
    gateway, sidecar, sidecar_b = services["gateway"], services["sidecar"], services["sidecar-b"]
    assert set(services) == {"gateway", "sidecar", "sidecar-b"}
    env = {key: str(value) for service in (gateway, sidecar) for key, value in service["environment"].items()}
    env["GATEWAY_AUTH_TOKEN"] = "x" * 32  # interpolated from the host's environment
    env["GATEWAY_ALLOWED_HOSTS"] = "*"
    assert env["GATEWAY_WORKERS"] == "${GATEWAY_WORKERS:-1}"  # one gateway process unless the host says more
    env["GATEWAY_WORKERS"] = "2"
    env["SIDECAR_NETWORK_SECRET"] = "y" * 32
    assert_settings_valid(env, monkeypatch, "docker-compose.yml")
    # node b: the same network secret (from the same host variable), bootstrapping from node a by service name
    secret = sidecar["environment"]["SIDECAR_NETWORK_SECRET"]
    assert (
        secret.startswith("${MCP_P2P_NETWORK_SECRET:?") and sidecar_b["environment"]["SIDECAR_NETWORK_SECRET"] == secret
    )
    listen_port = sidecar["environment"]["SIDECAR_LISTEN_ADDRS"].rsplit("/", 1)[1]
    assert sidecar_b["environment"]["SIDECAR_BOOTSTRAP_PEERS"] == f"/dns4/sidecar/tcp/{listen_port}"
    env_b = {key: str(value) for key, value in sidecar_b["environment"].items()}
    env_b["SIDECAR_NETWORK_SECRET"] = "y" * 32
    assert_settings_valid(env_b, monkeypatch, "docker-compose.yml sidecar-b")
    state_b = [v for v in sidecar_b["volumes"] if v.split(":")[1] == sidecar_b["environment"]["SIDECAR_DATA_DIR"]]
    assert state_b and state_b[0].split(":")[0] in compose["volumes"] and state_b[0] not in sidecar["volumes"]
    assert gateway["command"] == ["python", "-m", "gateway"]
    assert sidecar["command"] == ["python", "-m", "p2p_sidecar"]
    # One ipc:// socket on one shared volume.
    endpoint = sidecar["environment"]["SIDECAR_BRIDGE_ENDPOINT"]
    assert endpoint.startswith("ipc://") and gateway["environment"]["GATEWAY_BRIDGE_ENDPOINT"] == endpoint
    socket_dir = str(Path(endpoint[len("ipc://") :]).parent)
    shared = {v.split(":")[0] for v in gateway["volumes"] if v.split(":")[1] == socket_dir}
    assert shared and shared <= {v.split(":")[0] for v in sidecar["volumes"]}
    state = [v for v in sidecar["volumes"] if v.split(":")[1] == sidecar["environment"]["SIDECAR_DATA_DIR"]]
    assert state and state[0].split(":")[0] in compose["volumes"]
    assert gateway["depends_on"]["sidecar"]["condition"] == "service_healthy"
    assert any(port.endswith(":4001") for port in sidecar["ports"])
    assert any(port.endswith(":8000") for port in gateway["ports"])
    for service in (gateway, sidecar, sidecar_b):
        assert service["healthcheck"]["test"][:3] == ["CMD", "python", "/opt/mcp-p2p/healthcheck.py"]
        assert service["mem_limit"] and service["read_only"] is True
    assert seconds(sidecar["stop_grace_period"]) > float(env["SIDECAR_SHUTDOWN_GRACE_SECONDS"])
    assert seconds(gateway["stop_grace_period"]) > float(env["GATEWAY_GRACEFUL_SHUTDOWN_SECONDS"])


# -- Dockerfile -----------------------------------------------------------------------------------


def test_dockerfile_passes_hadolint() -> None:
    # Every rule is on at every severity; the only exceptions are inline, each with its reason.
    result = run(BIN / "hadolint", "--failure-threshold", "style", DEPLOY / "Dockerfile")
    assert result.returncode == 0 and not result.stdout.strip(), result.stdout + result.stderr
    text = (DEPLOY / "Dockerfile").read_text().splitlines()
    for number, line in enumerate(text):
        if "hadolint ignore=" in line:
            assert text[number - 1].startswith("#") and "hadolint" not in text[number - 1], "justify each ignore"


def test_hadolint_catches_an_unpinned_install(tmp_path: Path) -> None:
    broken = tmp_path / "Dockerfile"
    broken.write_text("FROM debian:bookworm\nRUN apt-get update && apt-get install -y curl\n")
    result = run(BIN / "hadolint", broken)
    assert result.returncode != 0 and "DL3008" in result.stdout


def test_dockerfile_is_multi_stage_non_root_with_healthcheck() -> None:
    text = (DEPLOY / "Dockerfile").read_text()
    stages = re.findall(r"^FROM (\S+)(?: AS (\w+))?", text, flags=re.MULTILINE)
    assert stages == [("${BASE_IMAGE}", "builder"), ("${BASE_IMAGE}", "")]
    assert re.search(r"^ARG BASE_IMAGE=python:3\.\d+-slim", text, flags=re.MULTILINE)
    final = text.split("\nFROM ${BASE_IMAGE}\n", 1)[1]
    assert re.search(r"^USER 10001:10001$", final, flags=re.MULTILINE)
    assert "HEALTHCHECK" in final and "gcc" not in final and "--no-index --find-links /wheels" in text
    ignored = (ROOT / ".dockerignore").read_text().splitlines()
    # An allow-list: everything is excluded, then only what the image needs is let back in.
    assert "*" in ignored and "!deploy/wheelhouse/" in ignored and not any(".venv" in line for line in ignored)


# -- systemd --------------------------------------------------------------------------------------


def systemd_analyze() -> str:
    path = shutil.which("systemd-analyze")
    if path is None:
        cannot_run(
            "systemd-analyze is not installed (Debian package 'systemd'); `make test` installs it when run as "
            "root with apt-get, otherwise install it to run the unit checks"
        )
    return path


def verify_units(directory: Path, names: list[str]) -> subprocess.CompletedProcess[str]:
    return run(systemd_analyze(), "verify", "--man=no", *names, cwd=directory)


def installed_copy(tmp_path: Path) -> Path:
    """The units as installed, except that their interpreter path points at an existing Python.

    ``systemd-analyze verify`` insists that ExecStart's binary exists; /opt/mcp-p2p/venv is
    where deploy/README.md installs it, which this machine does not have.
    """
    for unit in UNITS:
        text = unit.read_text()
        assert UNIT_PYTHON in text
        (tmp_path / unit.name).write_text(text.replace(UNIT_PYTHON, sys.executable))
    return tmp_path


def test_systemd_units_pass_systemd_analyze_verify(tmp_path: Path) -> None:
    directory = installed_copy(tmp_path)
    result = verify_units(directory, [unit.name for unit in UNITS])
    # verify exits 0 even for unknown keys and bad values: any output at all is a finding.
    assert result.returncode == 0 and not (result.stdout + result.stderr).strip(), result.stdout + result.stderr


def test_systemd_analyze_reports_a_bad_directive(tmp_path: Path) -> None:
    directory = installed_copy(tmp_path)
    unit = directory / "mcp-p2p-gateway.service"
    unit.write_text(unit.read_text().replace("MemoryMax=512M", "MemoryMax=lots\nRestartt=always"))
    result = verify_units(directory, [unit.name])
    assert "Invalid memory limit" in result.stderr and "Restartt" in result.stderr


def test_systemd_units_are_wired_the_way_the_processes_read_them(monkeypatch: pytest.MonkeyPatch) -> None:
    env = parse_env_file(ENV_FILE)
    for unit in UNITS:
        for assignment in unit_values(unit, "Environment"):
            key, _, value = assignment.partition("=")
            env[key] = value.replace("%S", "/var/lib")
    assert_settings_valid(env, monkeypatch, "systemd units + mcp-p2p.env")
    assert env["GATEWAY_BRIDGE_ENDPOINT"] == env["SIDECAR_BRIDGE_ENDPOINT"]
    assert env["SIDECAR_BRIDGE_ENDPOINT"].startswith("tcp://127.0.0.1:")
    sidecar = DEPLOY / "systemd" / "mcp-p2p-sidecar.service"
    gateway = DEPLOY / "systemd" / "mcp-p2p-gateway.service"
    assert unit_values(sidecar, "ExecStart") == [f"{UNIT_PYTHON} -m p2p_sidecar"]
    assert unit_values(gateway, "ExecStart") == [f"{UNIT_PYTHON} -m gateway"]
    # Ordered after the sidecar and pulling it in, but not bound to it: a dead sidecar leaves
    # the gateway running (and reporting unready).
    # With GATEWAY_WORKERS > 1 the main process is the workers' parent: SIGTERM goes to it alone, it passes
    # it on once; the workers' private sockets live in the unit's runtime directory.
    assert env["GATEWAY_WORKERS"] == "1"
    assert unit_values(gateway, "KillMode") == ["mixed"]
    assert unit_values(gateway, "RuntimeDirectory") == ["mcp-p2p-gateway"]
    assert unit_values(gateway, "RuntimeDirectoryMode") == ["0700"]
    assert "mcp-p2p-sidecar.service" in unit_values(gateway, "After")[0]
    assert "mcp-p2p-sidecar.service" in unit_values(gateway, "Wants")[0]
    assert not unit_values(gateway, "Requires") and not unit_values(gateway, "BindsTo")
    assert unit_values(sidecar, "Restart") == ["on-failure"]
    assert unit_values(sidecar, "StateDirectory") == ["mcp-p2p"]
    assert env["SIDECAR_DATA_DIR"] == "/var/lib/mcp-p2p"
    assert seconds(unit_values(sidecar, "TimeoutStopSec")[0]) > float(env["SIDECAR_SHUTDOWN_GRACE_SECONDS"])
    assert seconds(unit_values(gateway, "TimeoutStopSec")[0]) > float(env["GATEWAY_GRACEFUL_SHUTDOWN_SECONDS"])
    for unit in UNITS:
        assert unit_values(unit, "Type") == ["notify"]  # implemented by shared_schema/sd_notify.py
        assert unit_values(unit, "EnvironmentFile") == ["/etc/mcp-p2p/mcp-p2p.env"]
        for key in ("DynamicUser", "NoNewPrivileges", "PrivateTmp", "ProtectSystem", "MemoryMax"):
            assert unit_values(unit, key), f"{unit.name} lacks {key}="
