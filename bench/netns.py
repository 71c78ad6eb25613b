"""A throwaway network of Linux network namespaces, so a fault run can cut the wire between nodes.

    lab = NetnsLab.create(["a", "b", "c"])     # root only; NetnsLab.available() says whether it can work
    lab.address("b")                           # e.g. 10.130.7.2: where b's processes listen
    lab.exec_prefix("b")                       # ["ip", "netns", "exec", "<ns>"]: run a command inside b
    lab.partition("b"); lab.heal("b")          # b's cable pulled out of the switch, and plugged back
    lab.close()

Layout: one "switch" namespace holding a Linux bridge; each node gets its own
namespace with a veth pair whose other end is a port of that bridge; the root
namespace (where the bench runs and talks HTTP to the nodes) is one more port.
Partitioning a node sets its switch port down: the node keeps running, its
sockets stay open, and nothing it sends arrives anywhere (nor does anything
reach it) until the port is up again, which is what a cut cable looks like.
Names carry the bench's pid and the /24 is one no other network of the root
namespace uses (``bench/linklab.py``'s picker), so runs never collide; ``close``
deletes every namespace (which removes the veth pairs with them).
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field

from bench.linklab import netns_probe_fails, pick_mgmt_subnet, run_ip


@dataclass
class NetnsLab:
    tag: str
    nodes: dict[str, str] = field(default_factory=dict)
    """node name -> its namespace"""
    switch: str = ""
    root_link: str = ""
    subnet: str = ""
    """The first three octets of this lab's /24; the root namespace is .254, nodes .1, .2, ..."""

    @staticmethod
    def available() -> str | None:
        """None if namespaces can be made here; otherwise why not (for the run's record)."""
        if os.geteuid() != 0:
            return "not root: ip netns needs CAP_SYS_ADMIN"
        return netns_probe_fails("mcpq")

    @classmethod
    def create(cls, names: list[str]) -> NetnsLab:
        tag = str(os.getpid() % 100000)
        subnet = str(pick_mgmt_subnet(os.getpid() + 1).network_address).rsplit(".", 1)[0]
        lab = cls(tag, switch=f"mcpq-sw-{tag}", subnet=subnet)
        try:
            run_ip("netns", "add", lab.switch)
            run_ip("-n", lab.switch, "link", "add", "br0", "type", "bridge")
            run_ip("-n", lab.switch, "link", "set", "br0", "up")
            lab.root_link = f"mq{tag}h"
            run_ip("link", "add", lab.root_link, "type", "veth", "peer", "name", "uplink", "netns", lab.switch)
            run_ip("-n", lab.switch, "link", "set", "uplink", "master", "br0", "up")
            run_ip("addr", "add", f"{subnet}.254/24", "dev", lab.root_link)
            run_ip("link", "set", lab.root_link, "up")
            for index, name in enumerate(names, 1):
                namespace = f"mcpq-{name}-{tag}"
                run_ip("netns", "add", namespace)
                lab.nodes[name] = namespace
                run_ip("-n", namespace, "link", "set", "lo", "up")
                port = lab._port(name)
                run_ip(
                    "-n", namespace, "link", "add", "eth0", "type", "veth", "peer", "name", port, "netns", lab.switch
                )
                run_ip("-n", lab.switch, "link", "set", port, "master", "br0", "up")
                run_ip("-n", namespace, "addr", "add", f"{subnet}.{index}/24", "dev", "eth0")
                run_ip("-n", namespace, "link", "set", "eth0", "up")
        except BaseException:
            lab.close()
            raise
        return lab

    def _port(self, name: str) -> str:
        return f"p-{name}"[:15]

    def address(self, name: str) -> str:
        return f"{self.subnet}.{list(self.nodes).index(name) + 1}"

    def exec_prefix(self, name: str) -> list[str]:
        return ["ip", "netns", "exec", self.nodes[name]]

    def partition(self, name: str) -> None:
        run_ip("-n", self.switch, "link", "set", self._port(name), "down")

    def port_state(self, name: str) -> str:
        """The operational state of ``name``'s switch port (``DOWN`` while partitioned), as ip reports it."""
        fields = run_ip("-n", self.switch, "-o", "link", "show", self._port(name)).stdout.split()
        return fields[fields.index("state") + 1] if "state" in fields else "unknown"

    def namespace_inode(self, name: str) -> int:
        """The inode of ``name``'s namespace: what ``/proc/<pid>/ns/net`` of a process inside it shows."""
        return os.stat(f"/run/netns/{self.nodes[name]}").st_ino

    def heal(self, name: str) -> None:
        run_ip("-n", self.switch, "link", "set", self._port(name), "up")

    def close(self) -> None:
        for namespace in [*self.nodes.values(), self.switch]:
            if namespace:
                run_ip("netns", "del", namespace, check=False)
        if self.root_link:
            run_ip("link", "del", self.root_link, check=False)  # normally gone with its peer's namespace
        self.nodes.clear()
