"""The image built from deploy/Dockerfile: non-root, no build tools, a health check, both commands."""

from __future__ import annotations

import json

from harness import image, podman, record


def test_image_runs_unprivileged_without_build_tools_and_has_a_healthcheck() -> None:
    config = json.loads(podman("image", "inspect", image()).stdout)[0]
    record("image size", f"{config['Size'] / 1e6:.0f} MB ({image()})")
    assert config["Config"]["User"] == "10001:10001"
    assert config["Config"]["Cmd"] == ["python", "-m", "gateway"]
    assert {"8000/tcp", "4001/tcp"} <= set(config["Config"]["ExposedPorts"])
    assert config["Healthcheck"]["Test"] == ["CMD", "python", "/opt/mcp-p2p/healthcheck.py"]
    probe = podman(
        "run", "--rm", "--network=none", image(), "sh", "-c",
        "id -u; for tool in gcc cc make pip pip3; do command -v $tool; done; "
        "python -c 'import pip' 2>/dev/null && echo pip-importable; echo end",
    ).stdout.split()  # fmt: skip
    assert probe == ["10001", "end"], probe


def test_healthcheck_reports_unhealthy_when_no_process_runs() -> None:
    result = podman("run", "--rm", "--network=none", image(), "python", "/opt/mcp-p2p/healthcheck.py", check=False)
    assert result.returncode == 1 and "neither" in result.stderr, result


def test_both_commands_start_in_the_image() -> None:
    for module in ("gateway", "p2p_sidecar"):
        result = podman("run", "--rm", "--network=none", image(), "python", "-m", module, "--help")
        assert result.returncode == 0 and f"python -m {module}" in result.stdout
