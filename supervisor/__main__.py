"""A thin foreground supervisor over ``python -m p2p_sidecar`` and ``python -m gateway``.

Each child runs in its own session, so a terminal's Ctrl-C reaches only this
process, which then sends exactly one SIGTERM to each child (gateway first, so
it stops taking calls before the sidecar drains) and waits for them.  A gateway
of several workers (``--gateway-workers``) is one child: its parent process
passes the SIGTERM on to its workers and exits once they have drained.  If either
child dies on its own, the other is stopped and this process exits with the
dead child's code; after a clean stop it exits 0.  On Linux the children also
get SIGTERM if the supervisor itself is killed (``PR_SET_PDEATHSIG``).
"""

from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
import threading
import time
import urllib.request

from shared_schema.parent_death import die_with_parent

STOP_TIMEOUT_S = 15.0


def _start(name: str, module: str, extra: list[str]) -> subprocess.Popen[bytes]:
    print(f"supervisor: starting {name}: {sys.executable} -m {module} {' '.join(extra)}".rstrip(), flush=True)
    return subprocess.Popen(
        [sys.executable, "-m", module, *extra], start_new_session=True, preexec_fn=die_with_parent()
    )


def _stop(children: list[tuple[str, subprocess.Popen[bytes]]]) -> None:
    for _name, child in children:
        if child.poll() is None:
            child.send_signal(signal.SIGTERM)
    deadline = time.monotonic() + STOP_TIMEOUT_S
    for name, child in children:
        try:
            child.wait(timeout=max(0.1, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            print(f"supervisor: {name} did not stop within {STOP_TIMEOUT_S:.0f}s; killing it", flush=True)
            child.kill()
            child.wait()


def _announce_when_ready(url: str, stop: threading.Event) -> None:
    deadline = time.monotonic() + 30
    while not stop.is_set() and time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(url, timeout=1) as response:
                if response.status == 200:
                    print(f"supervisor: ready. MCP endpoint: {url.removesuffix('/health/ready')}/mcp", flush=True)
                    return
        except OSError:
            pass
        stop.wait(0.2)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m supervisor",
        description="Run the P2P sidecar and the gateway in the foreground; Ctrl-C stops both. "
        "Configure them with their SIDECAR_* and GATEWAY_* environment variables.",
    )
    parser.add_argument(
        "--gateway-workers",
        type=int,
        metavar="N",
        help="gateway processes on the port (python -m gateway --workers N; default GATEWAY_WORKERS, else 1)",
    )
    args = parser.parse_args(argv)
    host = os.environ.get("GATEWAY_HOST", "127.0.0.1")
    port = os.environ.get("GATEWAY_PORT", "8000")
    shown_host = "127.0.0.1" if host in ("0.0.0.0", "::") else host

    stop_requested = threading.Event()

    def request_stop(signum: int, _frame: object) -> None:
        print(f"supervisor: {signal.Signals(signum).name} received, stopping both processes", flush=True)
        stop_requested.set()

    signal.signal(signal.SIGINT, request_stop)
    signal.signal(signal.SIGTERM, request_stop)

    sidecar = _start("sidecar", "p2p_sidecar", [])
    gateway = _start(
        "gateway", "gateway", [] if args.gateway_workers is None else ["--workers", str(args.gateway_workers)]
    )
    children = [("gateway", gateway), ("sidecar", sidecar)]
    threading.Thread(
        target=_announce_when_ready, args=(f"http://{shown_host}:{port}/health/ready", stop_requested), daemon=True
    ).start()

    exit_code = 0
    while not stop_requested.is_set():
        for name, child in children:
            code = child.poll()
            if code is not None:
                print(f"supervisor: {name} exited with code {code}; stopping the other process", flush=True)
                exit_code = code or 1
                stop_requested.set()
                break
        stop_requested.wait(0.2)
    _stop(children)
    sys.exit(exit_code)


if __name__ == "__main__":
    main()
