"""Container health check for the mcp-p2p image: ``python /opt/mcp-p2p/healthcheck.py [--ready]``.

The image runs either process, so this finds which one runs in the container by looking
through /proc for ``-m gateway`` / ``-m p2p_sidecar`` and asks that process's health endpoint
over loopback, reading its port from the process's own environment.  (If a shared PID
namespace shows both, both must be healthy.)  It uses only the standard library: the image
has no curl.

The gateway is checked on ``/health`` (alive) by default; ``--ready`` checks ``/health/ready``
(a live sidecar on the bridge).  The sidecar is checked on its admin ``/health``.  Exit 0 means
healthy, 1 unhealthy, as HEALTHCHECK expects.
"""

from __future__ import annotations

import itertools
import sys
import urllib.error
import urllib.request
from pathlib import Path

MODULES = {"gateway": "gateway", "p2p_sidecar": "sidecar"}
WILDCARDS = {"", "0.0.0.0", "::", "[::]", "localhost"}


def running_roles() -> dict[str, dict[str, str]]:
    """Map each role found running here to that process's environment."""
    found: dict[str, dict[str, str]] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            argv = (entry / "cmdline").read_bytes().split(b"\0")
            raw_env = (entry / "environ").read_bytes().split(b"\0")
        except OSError:  # the process ended, or is not ours
            continue
        args = [arg.decode(errors="replace") for arg in argv]
        for flag, module in itertools.pairwise(args):
            if flag == "-m" and module in MODULES:
                env = dict(item.decode(errors="replace").partition("=")[::2] for item in raw_env if b"=" in item)
                found.setdefault(MODULES[module], env)
    return found


def loopback(host: str) -> str:
    return "127.0.0.1" if host in WILDCARDS else host


def health_url(role: str, env: dict[str, str], ready: bool) -> str:
    if role == "gateway":
        host = loopback(env.get("GATEWAY_HOST", "127.0.0.1"))
        return f"http://{host}:{env.get('GATEWAY_PORT', '8000')}/health" + ("/ready" if ready else "")
    host = loopback(env.get("SIDECAR_ADMIN_HOST", "127.0.0.1"))
    return f"http://{host}:{env.get('SIDECAR_ADMIN_PORT', '8002')}/health"


def check(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=3) as response:
            return bool(response.status == 200)
    except (urllib.error.URLError, OSError) as exc:
        print(f"{url}: {exc}", file=sys.stderr)
        return False


def main(argv: list[str]) -> int:
    ready = "--ready" in argv
    roles = running_roles()
    if not roles:
        print("neither python -m gateway nor python -m p2p_sidecar runs here", file=sys.stderr)
        return 1
    healthy = True
    for role, env in sorted(roles.items()):
        url = health_url(role, env, ready)
        ok = check(url)
        print(f"{role}: {'healthy' if ok else 'unhealthy'} ({url})")
        healthy = healthy and ok
    return 0 if healthy else 1


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
