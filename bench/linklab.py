"""Network namespaces joined point to point by links with delay and loss, for runs that must not be loopback.

    lab = LinkLab.create(["a", "b", "c"], {("a", "b"): Link(50, 0.01), ("a", "c"): Link(50, 0.01),
                                           ("b", "c"): Link(200, 0.05)})   # root only; LinkLab.available()
    lab.address("b")        # 10.77.0.2: b's address on the links (what its libp2p node listens on)
    lab.mgmt("b")           # b's address on its management port: the harness reaches its HTTP there
    lab.exec_prefix("b")    # ["ip", "netns", "exec", "<ns>"]: run a command inside b
    lab.set_link("b", "c", loss=1.0)   # cut a link (both directions); set it back later
    lab.close()             # deletes every namespace and device it made, by name, and stops the relay

Each node is a namespace of its own.  Each pair of nodes named in ``links`` is joined by one link: a TUN
device in each of the two namespaces, and a relay process (this module, ``python -m bench.linklab relay``,
in the root namespace) that reads every IP packet one side sends, drops it with the link's loss
probability, and writes it to the other side after the link's one-way delay.  Both directions get the same
delay and loss, independently, so a 50 ms link has a 100 ms round trip.

Why not veth pairs with ``tc netem``: this kernel has no netem (``tc qdisc add ... netem`` answers
"Specified qdisc kind is unknown"; /proc/config.gz has no CONFIG_NET_SCH_NETEM, and no modules can be
loaded), so the relay does in user space what netem does in the kernel, per packet: constant delay,
independent random loss, order kept.  The kernels' TCP stacks on both ends are real and see real
retransmissions.  The relay's own cost is a few microseconds per packet (it reports its counts on exit).

Every node also gets a management veth to the root namespace, on a /30 of its own inside a /24 picked
per run (and checked against the root namespace's addresses and routes), so the harness can talk to the
gateways and admin ports without crossing the emulated links.  Names carry the pid, so runs never
collide.
"""

from __future__ import annotations

import contextlib
import fcntl
import heapq
import ipaddress
import itertools
import json
import os
import random
import selectors
import struct
import subprocess
import sys
import time
from dataclasses import dataclass, field
from typing import Any

NODE_SUBNET = "10.77.0"
"""Addresses on the links: only inside the namespaces, never in the root namespace."""
TUNSETIFF = 0x400454CA
IFF_TUN = 0x0001
IFF_NO_PI = 0x1000


@dataclass(frozen=True)
class Link:
    delay_ms: float
    loss: float = 0.0


def run_ip(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["ip", *args], check=check, capture_output=True, text=True)


def netns_probe_fails(prefix: str) -> str | None:
    """None if a network namespace can be made here (one is made and deleted); otherwise why not."""
    probe = f"{prefix}-probe-{os.getpid()}"
    done = run_ip("netns", "add", probe, check=False)
    if done.returncode != 0:
        return f"ip netns add failed: {done.stderr.strip()}"
    run_ip("netns", "del", probe, check=False)
    return None


def _root_networks() -> list[ipaddress.IPv4Network]:
    """Every IPv4 network the root namespace has an address in or a route to."""
    found = []
    for line in run_ip("-4", "-o", "addr", "show").stdout.splitlines():
        parts = line.split()
        if "inet" in parts:
            found.append(ipaddress.IPv4Network(parts[parts.index("inet") + 1], strict=False))
    for line in run_ip("-4", "route", "show").stdout.splitlines():
        target = line.split()[0]
        if target != "default":
            try:
                found.append(ipaddress.IPv4Network(target, strict=False))
            except ValueError:
                continue
    return found


def pick_mgmt_subnet(seed: int) -> ipaddress.IPv4Network:
    """A /24 under 10.128.0.0/9 that nothing in the root namespace uses, starting from one derived from ``seed``."""
    used = _root_networks()
    for step in range(4096):
        index = (seed * 7919 + step) % 32768
        candidate = ipaddress.IPv4Network(f"10.{128 + index // 256}.{index % 256}.0/24")
        if not any(candidate.overlaps(network) for network in used):
            return candidate
    raise RuntimeError("no free /24 under 10.128.0.0/9 in the root namespace")


@dataclass
class LinkLab:
    tag: str
    nodes: dict[str, str] = field(default_factory=dict)
    """node name -> its namespace"""
    links: dict[tuple[str, str], Link] = field(default_factory=dict)
    subnet: ipaddress.IPv4Network | None = None
    relay: subprocess.Popen[str] | None = None
    _root_links: list[str] = field(default_factory=list)

    @staticmethod
    def available() -> str | None:
        """None if this machine can run a lab; otherwise why not."""
        if os.geteuid() != 0:
            return "not root: network namespaces and TUN devices need CAP_NET_ADMIN / CAP_SYS_ADMIN"
        if not os.path.exists("/dev/net/tun"):
            return "no /dev/net/tun"
        return netns_probe_fails("l14")

    @classmethod
    def create(cls, names: list[str], links: dict[tuple[str, str], Link]) -> LinkLab:
        tag = str(os.getpid() % 100000)
        lab = cls(tag, links=dict(links))
        try:
            lab._build(names)
        except BaseException:
            lab.close()
            raise
        return lab

    # -- naming -------------------------------------------------------------------------------------------------
    def _index(self, name: str) -> int:
        return list(self.nodes).index(name) + 1

    def _tun(self, name: str, other: str) -> str:
        return f"lt{self.tag}{self._index(name)}{self._index(other)}"

    def address(self, name: str) -> str:
        return f"{NODE_SUBNET}.{self._index(name)}"

    def mgmt(self, name: str) -> str:
        assert self.subnet is not None
        return str(self.subnet.network_address + 4 * self._index(name) + 2)

    def exec_prefix(self, name: str) -> list[str]:
        return ["ip", "netns", "exec", self.nodes[name]]

    # -- building -----------------------------------------------------------------------------------------------
    def _build(self, names: list[str]) -> None:
        for name in names:
            namespace = f"l14-{self.tag}-{name}"
            run_ip("netns", "add", namespace)
            self.nodes[name] = namespace
            run_ip("-n", namespace, "link", "set", "lo", "up")
            run_ip("-n", namespace, "addr", "add", f"{self.address(name)}/32", "dev", "lo")
            for knob in ("all", "default", "lo"):
                subprocess.run(
                    [*self.exec_prefix(name), "sysctl", "-q", "-w", f"net.ipv4.conf.{knob}.rp_filter=0"],
                    check=False,
                    capture_output=True,
                )
        self.subnet = pick_mgmt_subnet(os.getpid())
        for name in names:
            index = self._index(name)
            root_side = f"lm{self.tag}{index}"
            self._root_links.append(root_side)
            run_ip("link", "add", root_side, "type", "veth", "peer", "name", "mgmt0", "netns", self.nodes[name])
            run_ip("addr", "add", f"{self.subnet.network_address + 4 * index + 1}/30", "dev", root_side)
            run_ip("link", "set", root_side, "up")
            run_ip("-n", self.nodes[name], "addr", "add", f"{self.mgmt(name)}/30", "dev", "mgmt0")
            run_ip("-n", self.nodes[name], "link", "set", "mgmt0", "up")
        spec = []
        for (a, b), link in self.links.items():
            spec.append({"name": f"{a}-{b}", "a": self._tun(a, b), "b": self._tun(b, a), **link.__dict__})
        self.relay = subprocess.Popen(
            [sys.executable, "-m", "bench.linklab", "relay"],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
            cwd=os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
        )
        assert self.relay.stdin is not None and self.relay.stdout is not None
        self.relay.stdin.write(json.dumps(spec) + "\n")
        self.relay.stdin.flush()
        ready = self.relay.stdout.readline().strip()
        if ready != "ready":
            raise RuntimeError(f"the link relay did not start: {ready!r}")
        for a, b in self.links:
            for here, there in ((a, b), (b, a)):
                device = self._tun(here, there)
                run_ip("link", "set", device, "netns", self.nodes[here])
                run_ip("-n", self.nodes[here], "link", "set", device, "up")
                run_ip("-n", self.nodes[here], "route", "add", f"{self.address(there)}/32", "dev", device,
                    "src", self.address(here))  # fmt: skip

    def set_link(self, a: str, b: str, *, loss: float | None = None, delay_ms: float | None = None) -> None:
        """Change a link while it runs (``loss=1.0`` cuts it, in both directions)."""
        name = f"{a}-{b}" if (a, b) in self.links else f"{b}-{a}"
        change = {"name": name, "loss": loss, "delay_ms": delay_ms}
        assert self.relay is not None and self.relay.stdin is not None
        self.relay.stdin.write(json.dumps(change) + "\n")
        self.relay.stdin.flush()

    def close(self) -> dict[str, dict[str, int]]:
        """Stop the relay (returning its per-link counts) and delete what the lab made."""
        counts: dict[str, dict[str, int]] = {}
        if self.relay is not None:
            try:
                if self.relay.stdin is not None:
                    self.relay.stdin.close()
                out = self.relay.stdout.read() if self.relay.stdout is not None else ""
                self.relay.wait(timeout=10)
                counts = json.loads(out.strip().splitlines()[-1]) if out.strip() else {}
            except (subprocess.TimeoutExpired, ValueError, OSError):
                self.relay.kill()
                self.relay.wait(timeout=10)
            finally:
                if self.relay.stdout is not None:
                    self.relay.stdout.close()
            self.relay = None
        for namespace in self.nodes.values():
            run_ip("netns", "del", namespace, check=False)  # takes its ends of the veth and the TUN devices with it
        for link in self._root_links:
            run_ip("link", "del", link, check=False)  # normally gone with its peer's namespace
        self.nodes.clear()
        self._root_links.clear()
        return counts


# -- the relay: one process, every link -------------------------------------------------------------------------


def _open_tun(name: str) -> int:
    fd = os.open("/dev/net/tun", os.O_RDWR | os.O_NONBLOCK)
    fcntl.ioctl(fd, TUNSETIFF, struct.pack("16sH", name.encode(), IFF_TUN | IFF_NO_PI))
    return fd


def relay(spec: list[dict[str, Any]]) -> dict[str, dict[str, int]]:
    """Carry packets between the two TUN devices of each link until stdin ends; returns the counts per link."""
    rng = random.Random()
    selector = selectors.DefaultSelector()
    links: dict[str, dict[str, float]] = {}
    counts: dict[str, dict[str, int]] = {}
    for entry in spec:
        name = str(entry["name"])
        fd_a, fd_b = _open_tun(str(entry["a"])), _open_tun(str(entry["b"]))
        links[name] = {"delay": float(entry["delay_ms"]) / 1000, "loss": float(entry["loss"])}
        counts[name] = {"packets": 0, "dropped": 0, "bytes": 0}
        selector.register(fd_a, selectors.EVENT_READ, (name, fd_b))
        selector.register(fd_b, selectors.EVENT_READ, (name, fd_a))
    os.set_blocking(sys.stdin.fileno(), False)
    selector.register(sys.stdin.fileno(), selectors.EVENT_READ, None)
    print("ready", flush=True)
    queue: list[tuple[float, int, int, bytes]] = []
    order = itertools.count()
    pending = b""
    while True:
        timeout = max(0.0, queue[0][0] - time.monotonic()) if queue else None
        for key, _ in selector.select(timeout):
            if key.data is None:  # a change to a link, or the end
                chunk = os.read(key.fd, 65536)
                if not chunk:
                    return counts
                pending += chunk
                while b"\n" in pending:
                    line, pending = pending.split(b"\n", 1)
                    change = json.loads(line)
                    link = links[change["name"]]
                    if change.get("loss") is not None:
                        link["loss"] = float(change["loss"])
                    if change.get("delay_ms") is not None:
                        link["delay"] = float(change["delay_ms"]) / 1000
                continue
            name, out = key.data
            link = links[name]
            while True:
                try:
                    packet = os.read(key.fd, 65536)
                except BlockingIOError:
                    break
                except OSError:
                    break
                counts[name]["packets"] += 1
                counts[name]["bytes"] += len(packet)
                if rng.random() < link["loss"]:
                    counts[name]["dropped"] += 1
                    continue
                heapq.heappush(queue, (time.monotonic() + link["delay"], next(order), out, packet))
        now = time.monotonic()
        while queue and queue[0][0] <= now:
            _, _, out, packet = heapq.heappop(queue)
            with contextlib.suppress(OSError):  # the other side's device is down (its namespace is going away)
                os.write(out, packet)


def _relay_main() -> None:
    spec = json.loads(sys.stdin.readline())
    counts = relay(spec)
    print(json.dumps(counts), flush=True)


if __name__ == "__main__" and sys.argv[1:] == ["relay"]:
    _relay_main()
