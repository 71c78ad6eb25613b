"""CURVE keys for a bridge that leaves the machine, and the command that makes them.

On loopback or ``ipc://`` the bridge is reachable only from this host and runs
unencrypted.  Bound to any other address it must use ZeroMQ's CURVE mechanism:
the sidecar proves it holds the secret key whose public half the gateway was
given, the traffic is encrypted, and the sidecar admits only gateways whose
public keys it lists (checked by its ZAP handler, ``p2p_sidecar/zap.py``).

Keys are stored in ZeroMQ's own certificate format (``zmq.auth``): ``NAME.key``
holds the public key and may be copied anywhere; ``NAME.key_secret`` holds both
halves and stays with its owner (mode 0600).  Make a set with

    python -m shared_schema.curve DIR            # DIR/sidecar.key[_secret], DIR/gateway.key[_secret]
    python -m shared_schema.curve DIR --name gw2 # one more gateway

and give each process the files its settings name (see the README's Security section).
"""

from __future__ import annotations

import argparse
import os
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import zmq
import zmq.auth

PUBLIC_SUFFIX = ".key"
SECRET_SUFFIX = ".key_secret"


class CurveKeyError(ValueError):
    """A key file that cannot be used; the message names the setting and the file."""


@dataclass(frozen=True)
class CurveKeyPair:
    public: bytes
    secret: bytes


def _read(path: Path, variable: str) -> tuple[bytes | None, bytes | None]:
    try:
        public, secret = zmq.auth.load_certificate(path)
    except (OSError, ValueError) as exc:
        raise CurveKeyError(f"{variable}: {path} is not a ZeroMQ certificate ({exc})") from None
    if public is None or len(public) != 40:
        raise CurveKeyError(f"{variable}: {path} holds no CURVE public key")
    return public, secret


def load_keypair(path: Path, variable: str) -> CurveKeyPair:
    """This process's own keys, from a ``.key_secret`` certificate."""
    public, secret = _read(path, variable)
    if secret is None or len(secret) != 40:
        raise CurveKeyError(f"{variable}: {path} is a public certificate; give the {SECRET_SUFFIX} file")
    assert public is not None
    return CurveKeyPair(public, secret)


def load_public_key(path: Path, variable: str) -> bytes:
    public, _ = _read(path, variable)
    assert public is not None
    return public


def load_public_keys(paths: Iterable[str | Path], variable: str) -> frozenset[bytes]:
    """Public keys from certificate files, or from every ``*.key`` file in the directories given."""
    keys: set[bytes] = set()
    for entry in paths:
        path = Path(entry)
        if path.is_dir():
            files = sorted(path.glob(f"*{PUBLIC_SUFFIX}"))
            if not files:
                raise CurveKeyError(f"{variable}: directory {path} holds no *{PUBLIC_SUFFIX} certificates")
        elif path.is_file():
            files = [path]
        else:
            raise CurveKeyError(f"{variable}: {path} does not exist")
        keys.update(load_public_key(file, variable) for file in files)
    if not keys:
        raise CurveKeyError(f"{variable}: no public keys given")
    return frozenset(keys)


def _certificate(comment: str, public: bytes, secret: bytes | None = None) -> str:
    """The text of a certificate in the layout ``zmq.auth.load_certificate`` reads."""
    lines = [f"#   {comment}", "", "metadata", "curve", f'    public-key = "{public.decode()}"']
    if secret is not None:
        lines.append(f'    secret-key = "{secret.decode()}"')
    return "\n".join(lines) + "\n"


def generate(directory: Path, name: str) -> tuple[Path, Path]:
    """Write ``NAME.key`` and ``NAME.key_secret`` (created 0600) into ``directory``; never overwrite."""
    directory.mkdir(parents=True, exist_ok=True)
    public_path, secret_path = directory / f"{name}{PUBLIC_SUFFIX}", directory / f"{name}{SECRET_SUFFIX}"
    for path in (public_path, secret_path):
        if path.exists():
            raise CurveKeyError(f"{path} exists already; remove it or pick another --name")
    public, secret = zmq.curve_keypair()
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL
    with os.fdopen(os.open(secret_path, flags, 0o600), "w") as handle:
        handle.write(_certificate(f"mcp-p2p bridge CURVE secret certificate '{name}': keep private", public, secret))
    with os.fdopen(os.open(public_path, flags, 0o644), "w") as handle:
        handle.write(_certificate(f"mcp-p2p bridge CURVE public certificate '{name}'", public))
    return public_path, secret_path


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m shared_schema.curve",
        description="Make CURVE certificates for a bridge bound to a non-loopback address: by default one for the "
        "sidecar and one for a gateway. NAME.key is public; NAME.key_secret stays with its owner.",
    )
    parser.add_argument("directory", type=Path, help="where to write the certificates")
    parser.add_argument("--name", action="append", help="certificate name (repeatable); default: sidecar, gateway")
    args = parser.parse_args(argv)
    names = args.name or ["sidecar", "gateway"]
    try:
        written = {name: generate(args.directory, name) for name in names}
    except (CurveKeyError, OSError) as exc:
        parser.exit(1, f"cannot write certificates: {exc}\n")
    for name, (public, secret) in written.items():
        print(f"{name}: public {public}  secret {secret}")
    if {"sidecar", "gateway"} <= written.keys():
        directory = args.directory
        print(
            f"\nsidecar:  SIDECAR_BRIDGE_CURVE_SECRET_KEY_FILE={directory}/sidecar.key_secret "
            f"SIDECAR_BRIDGE_CURVE_CLIENT_KEYS={directory}/gateway.key\n"
            f"gateway:  GATEWAY_BRIDGE_CURVE_SECRET_KEY_FILE={directory}/gateway.key_secret "
            f"GATEWAY_BRIDGE_CURVE_SERVER_KEY_FILE={directory}/sidecar.key"
        )


if __name__ == "__main__":
    main()
