"""Multiaddr parsing and the addresses a node advertises.

Only the ``multiaddr`` package is imported here (about 16 ms), never libp2p
itself, so the settings can validate addresses at start-up without paying
for the whole libp2p import.  Every parse failure is a ``ValueError`` whose
message names the offending address, which pydantic turns into the one-line
"invalid setting" report.
"""

from __future__ import annotations

import ipaddress
import socket
from collections.abc import Iterable
from dataclasses import dataclass

import multiaddr
from multiaddr.exceptions import Error as MultiaddrError

_DIALABLE_HOSTS = ("ip4", "ip6", "dns", "dns4", "dns6")


def parse_multiaddr(text: str) -> multiaddr.Multiaddr:
    """Parse one multiaddr or raise ``ValueError`` saying which one and why."""
    text = text.strip()
    try:
        return multiaddr.Multiaddr(text)
    except (MultiaddrError, ValueError, TypeError) as exc:
        raise ValueError(f"{text!r} is not a multiaddr ({exc})") from None


def protocol_names(addr: multiaddr.Multiaddr) -> list[str]:
    return [proto.name for proto in addr.protocols()]


def check_listen_addr(text: str) -> str:
    """A TCP address to listen on: ``/ip4/HOST/tcp/PORT`` or ``/ip6/HOST/tcp/PORT``, no ``/p2p``."""
    addr = parse_multiaddr(text)
    names = protocol_names(addr)
    if len(names) != 2 or names[0] not in ("ip4", "ip6") or names[1] != "tcp":
        raise ValueError(f"{text!r}: listen addresses must be /ip4/HOST/tcp/PORT or /ip6/HOST/tcp/PORT")
    return str(addr)


def check_announce_addr(text: str) -> str:
    """An address other peers can dial us at (host + tcp port); a trailing ``/p2p/<id>`` is dropped."""
    addr = parse_multiaddr(text)
    names = protocol_names(addr)
    if names and names[-1] == "p2p":
        addr = addr.decapsulate(multiaddr.Multiaddr(f"/p2p/{addr.value_for_protocol('p2p')}"))
        names = names[:-1]
    if len(names) != 2 or names[0] not in _DIALABLE_HOSTS or names[1] != "tcp":
        raise ValueError(f"{text!r}: announce addresses must be /ip4|ip6|dns*/HOST/tcp/PORT")
    return str(addr)


@dataclass(frozen=True, slots=True)
class PeerAddr:
    """A peer reachable at one address: ``/ip4/1.2.3.4/tcp/4001/p2p/12D3Koo...`` split in two."""

    peer_id: str
    addr: str

    @property
    def full(self) -> str:
        return f"{self.addr}/p2p/{self.peer_id}"


def parse_peer_addr(text: str, *, peer_id: str | None = None) -> PeerAddr:
    """Parse a dialable peer address.

    The address must end in ``/p2p/<peer id>`` unless ``peer_id`` is given;
    when both are there they must agree (dialing an address with the wrong
    id would fail the Noise handshake anyway, but later and less clearly).
    """
    addr = parse_multiaddr(text)
    names = protocol_names(addr)
    embedded = None
    if names and names[-1] == "p2p":
        embedded = addr.value_for_protocol("p2p")
        addr = addr.decapsulate(multiaddr.Multiaddr(f"/p2p/{embedded}"))
        names = names[:-1]
    if embedded is None and peer_id is None:
        raise ValueError(f"{text!r}: a peer address must end in /p2p/<peer id>")
    if embedded is not None and peer_id is not None and embedded != peer_id:
        raise ValueError(f"{text!r} names peer {embedded}, not {peer_id}")
    if len(names) != 2 or names[0] not in _DIALABLE_HOSTS or names[1] != "tcp":
        raise ValueError(f"{text!r}: only TCP peer addresses (/ip4|ip6|dns*/HOST/tcp/PORT/p2p/ID) are supported")
    resolved_id = embedded or peer_id
    assert resolved_id is not None
    check_peer_id(resolved_id)
    return PeerAddr(resolved_id, str(addr))


def check_peer_id(text: str) -> str:
    """A peer id as printed by libp2p (base58 multihash); validated through a ``/p2p`` multiaddr."""
    if not text or len(text) > 128:
        raise ValueError(f"{text[:40]!r} is not a peer id")
    parse_multiaddr(f"/p2p/{text}")
    return text


def parse_bootstrap_entry(text: str) -> PeerAddr | str:
    """A bootstrap peer: its address with ``/p2p/<peer id>`` (a ``PeerAddr``), or the TCP address alone (a str).

    Without the id, the node learns it from the Noise handshake when it first dials the address (a node
    whose id is not known in advance, e.g. the other replica of a deployment); with it, a different key
    at that address fails the handshake.
    """
    try:
        return parse_peer_addr(text)
    except ValueError:
        addr = parse_multiaddr(text)
        names = protocol_names(addr)
        if "p2p" in names:
            raise
    if len(names) != 2 or names[0] not in _DIALABLE_HOSTS or names[1] != "tcp":
        raise ValueError(f"{text!r}: bootstrap addresses are /ip4|ip6|dns*/HOST/tcp/PORT[/p2p/ID]")
    return str(addr)


def check_bootstrap_addr(text: str) -> str:
    entry = parse_bootstrap_entry(text)
    return entry.full if isinstance(entry, PeerAddr) else entry


def parse_peer_list(lines: Iterable[str]) -> tuple[list[PeerAddr], list[int]]:
    """Parse bootstrap entries (comments and blank lines skipped); returns the good ones and bad line numbers."""
    good: list[PeerAddr] = []
    bad: list[int] = []
    for number, raw in enumerate(lines, start=1):
        line = raw.split("#", 1)[0].strip()
        if not line:
            continue
        try:
            good.append(parse_peer_addr(line))
        except ValueError:
            bad.append(number)
    return good, bad


def _interface_ips(version: int) -> list[str]:
    """This host's own addresses of one IP version, loopback first; best effort, stdlib only."""
    found: list[str] = ["127.0.0.1" if version == 4 else "::1"]
    family = socket.AF_INET if version == 4 else socket.AF_INET6
    try:
        infos = socket.getaddrinfo(socket.gethostname(), None, family, socket.SOCK_STREAM)
    except OSError:
        infos = []
    for info in infos:
        ip = str(info[4][0]).split("%", 1)[0]
        if ip not in found and not ipaddress.ip_address(ip).is_link_local:
            found.append(ip)
    return found


def advertised_addrs(listening: Iterable[str]) -> list[str]:
    """The addresses worth telling peers about, given what the transport is bound to.

    py-libp2p 0.8.1 advertises a wildcard bind (``/ip4/0.0.0.0/tcp/4001``)
    as-is, which no peer can dial; here a wildcard becomes this host's own
    addresses (loopback and the interfaces its hostname resolves to).
    """
    result: list[str] = []
    for text in listening:
        addr = parse_multiaddr(text)
        names = protocol_names(addr)
        if len(names) < 2 or names[0] not in ("ip4", "ip6"):
            result.append(str(addr))
            continue
        host = addr.value_for_protocol(names[0])
        port = addr.value_for_protocol("tcp")
        if host in ("0.0.0.0", "::"):
            version = 4 if names[0] == "ip4" else 6
            result.extend(f"/{names[0]}/{ip}/tcp/{port}" for ip in _interface_ips(version))
        else:
            result.append(str(addr))
    return list(dict.fromkeys(result))
