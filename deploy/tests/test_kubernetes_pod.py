"""The Kubernetes manifests' pod, run with ``podman kube play``: both containers, their own commands,
environment and probe endpoints; an MCP call through the gateway container reaches the sidecar container.
"""

from __future__ import annotations

import base64
import concurrent.futures
import copy
import json
import time
from collections.abc import Iterator
from typing import Any

import pytest
import yaml
from harness import DEPLOY, http_get, image, mcp_p2p_calls, podman, record, rest_call, unique, wait_http

from tests.procs import free_port

TOKEN = "kube-play-" + "0123456789abcdef" * 2


def manifests() -> dict[str, dict[str, Any]]:
    docs: dict[str, dict[str, Any]] = {}
    for path in sorted((DEPLOY / "kubernetes").glob("*.yaml")):
        for doc in yaml.safe_load_all(path.read_text()):
            docs[doc["kind"]] = doc  # one of each kind but Service, which kube play does not need
    return docs


def as_podman_pod(
    docs: dict[str, dict[str, Any]], suffix: str
) -> tuple[dict[str, Any], dict[str, Any], dict[int, int]]:
    """The StatefulSet's pod, in the form ``podman kube play`` (4.3) takes.  Only what it cannot take changes:

    * StatefulSet -> its pod template as a Pod (kube play knows Pods and Deployments only);
    * the volume claim template -> a persistentVolumeClaim volume (podman makes it a named volume);
    * names get ``suffix`` so that runs never collide, and the image is the one just built;
    * each containerPort gets a hostPort on 127.0.0.1 (a free port), so the host can reach it the way
      the kubelet does: through the pod's address, not its loopback.  (Without hostPort, kube play
      would publish every containerPort on all interfaces at the same number.)

    Commands, environment, probes, resources and security contexts are the manifest's own.
    """
    config = copy.deepcopy(docs["ConfigMap"])
    config["metadata"]["name"] += f"-{suffix}"
    sts = docs["StatefulSet"]
    spec = copy.deepcopy(sts["spec"]["template"]["spec"])
    host_ports: dict[int, int] = {}
    for container in spec["containers"]:
        container["image"] = image()
        for source in container.get("envFrom", []):
            source["configMapRef"]["name"] = config["metadata"]["name"]
        for var in container.get("env", []):
            if "secretKeyRef" in var.get("valueFrom", {}):
                var["valueFrom"]["secretKeyRef"]["name"] += f"-{suffix}"
        for port in container["ports"]:
            host_ports[port["containerPort"]] = port["hostPort"] = free_port()
            port["hostIP"] = "127.0.0.1"
    for claim in sts["spec"]["volumeClaimTemplates"]:
        name = claim["metadata"]["name"]
        spec["volumes"].append({"name": name, "persistentVolumeClaim": {"claimName": f"{name}-{suffix}"}})
    pod = {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {
            "name": f"{sts['metadata']['name']}-{suffix}",
            "labels": sts["spec"]["template"]["metadata"]["labels"],
        },
        "spec": spec,
    }
    return config, pod, host_ports


@pytest.fixture(scope="module")
def pod(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    docs = manifests()
    suffix = unique("kp")
    config, pod, host_ports = as_podman_pod(docs, suffix)
    tmp = tmp_path_factory.mktemp("kube")
    play = tmp / "pod.yaml"
    play.write_text(yaml.safe_dump_all([config, pod]))
    # podman resolves secretKeyRef from a podman secret holding a JSON map of base64 values.
    secret = docs["Secret"]
    secret_name = f"{secret['metadata']['name']}-{suffix}"
    secret_file = tmp / "secret.json"
    secret_file.write_text(json.dumps({key: base64.b64encode(TOKEN.encode()).decode() for key in secret["stringData"]}))
    claims = [
        volume["persistentVolumeClaim"]["claimName"]
        for volume in pod["spec"]["volumes"]
        if "persistentVolumeClaim" in volume
    ]
    podman("secret", "create", secret_name, str(secret_file))
    try:
        started = time.monotonic()
        podman("kube", "play", str(play))
        gateway = next(c for c in pod["spec"]["containers"] if c["name"] == "gateway")
        ready = gateway["readinessProbe"]["httpGet"]
        url = f"http://127.0.0.1:{host_ports[ready['port']]}"
        try:
            wait_http(url + ready["path"], 90, what="gateway readiness probe")
        except AssertionError:
            for container in pod["spec"]["containers"]:
                print(podman("logs", f"{pod['metadata']['name']}-{container['name']}", check=False).stderr[-3000:])
            raise
        record("kube play -> pod ready (gateway /health/ready 200)", f"{time.monotonic() - started:.1f} s")
        yield {"pod": pod, "url": url, "host_ports": host_ports, "name": pod["metadata"]["name"], "config": config}
    finally:
        podman("kube", "down", str(play), check=False)
        podman("secret", "rm", secret_name, check=False)
        for claim in claims:
            podman("volume", "rm", "--force", claim, check=False)
    leftovers = podman("ps", "-a", "--filter", f"name={suffix}", "--format", "{{.Names}}").stdout.strip()
    assert not leftovers, f"containers left behind: {leftovers}"


def container(pod: dict[str, Any], name: str) -> dict[str, Any]:
    return next(c for c in pod["pod"]["spec"]["containers"] if c["name"] == name)


def sidecar_handled_calls(pod: dict[str, Any]) -> int:
    probe = container(pod, "sidecar")["readinessProbe"]["httpGet"]
    status, body = http_get(f"http://127.0.0.1:{pod['host_ports'][probe['port']]}{probe['path']}")
    assert status == 200, body
    return int(body["bridge"]["handled_calls"])


def test_every_probe_endpoint_answers_on_the_pod_address(pod: dict[str, Any]) -> None:
    # A hostPort forwards to the pod's own address, as the kubelet's probes arrive: a process bound
    # to loopback only (the sidecar's admin port by default) would fail here.
    for spec in pod["pod"]["spec"]["containers"]:
        for kind in ("startupProbe", "readinessProbe", "livenessProbe"):
            probe = spec[kind]["httpGet"]
            status, body = http_get(f"http://127.0.0.1:{pod['host_ports'][probe['port']]}{probe['path']}")
            assert status == 200, f"{spec['name']} {kind} {probe}: {status} {body}"


def test_mcp_call_through_the_gateway_container_reaches_the_sidecar_container(pod: dict[str, Any]) -> None:
    before = sidecar_handled_calls(pod)
    results = mcp_p2p_calls(pod["url"], TOKEN)
    # The sidecar container counted the calls (2 per session), and its answer names the bridge
    # endpoint from the ConfigMap: the pod's shared loopback.
    assert sidecar_handled_calls(pod) >= before + 4
    status = results["auto"]["status"]
    assert status["bridge"]["endpoint"] == pod["config"]["data"]["SIDECAR_BRIDGE_ENDPOINT"]
    health = http_get(pod["url"] + "/health")[1]
    assert health["bridge"]["state"] == "up" and health["bridge"]["endpoint"] == status["bridge"]["endpoint"]
    # Without the Secret's token the gateway refuses.
    assert http_get(pod["url"] + "/tools/list")[0] == 401
    assert http_get(pod["url"] + "/tools/list", token=TOKEN)[0] == 200


def test_containers_run_as_the_manifest_says(pod: dict[str, Any]) -> None:
    usage = {}
    for spec in pod["pod"]["spec"]["containers"]:
        name = f"{pod['name']}-{spec['name']}"
        inspect = json.loads(podman("inspect", name).stdout)[0]
        limit = spec["resources"]["limits"]["memory"]
        assert inspect["HostConfig"]["Memory"] == int(limit.removesuffix("Mi")) * 1024 * 1024
        assert inspect["HostConfig"]["ReadonlyRootfs"] is True
        probe = podman(
            "exec",
            name,
            "sh",
            "-c",
            "id -u; touch /not-writable 2>/dev/null && echo writable; touch /tmp/ok && echo tmp-ok",
        )
        assert probe.stdout.split() == [str(spec["securityContext"]["runAsUser"]), "tmp-ok"], probe.stdout
        usage[spec["name"]] = podman("stats", "--no-stream", "--format", "{{.MemUsage}}", name).stdout.strip()
    record("pod memory in use after the calls", ", ".join(f"{k} {v}" for k, v in sorted(usage.items())))
    state = podman("exec", f"{pod['name']}-sidecar", "sh", "-c", "stat -c '%u %a' $SIDECAR_DATA_DIR").stdout.split()
    assert state == ["10001", "700"], state


def test_pod_stop_drains_in_flight_work_and_both_exit_0(pod: dict[str, Any]) -> None:
    # What the kubelet does on delete: SIGTERM to both containers at once, SIGKILL after
    # terminationGracePeriodSeconds (kube play itself ignores that field, so it is passed here).
    # The containers are stopped, not the pod: `podman pod stop` (4.3) stops the infra container
    # with them, which takes the pod's network away from calls still in flight; Kubernetes
    # removes the pod's sandbox only after its containers have exited.
    grace = pod["pod"]["spec"]["terminationGracePeriodSeconds"]
    names = [f"{pod['name']}-{spec['name']}" for spec in pod["pod"]["spec"]["containers"]]
    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        slow = pool.submit(rest_call, pod["url"], "p2p_echo", {"message": "in flight", "delay_ms": 3000}, TOKEN)
        time.sleep(1.0)
        started = time.monotonic()
        podman("stop", "--time", str(grace), *names)
        stopped = time.monotonic() - started
        status, body = slow.result(timeout=30)
    assert status == 200 and body["result"]["message"] == "in flight", body
    assert stopped < grace
    for name in names:
        code = podman("inspect", name, "--format", "{{.State.ExitCode}}").stdout.strip()
        assert code == "0", f"{name} exited {code}"
    record("pod stop with a 3 s call in flight", f"{stopped:.1f} s, call answered, both containers exit 0")
