"""Running the js-libp2p test peer (``tests/js/libp2p/peer.mjs``) from Python tests.

The peer prints one JSON object per line (``{"event": ...}``); ``JsPeer`` collects them in a thread so a test
can wait for an event while the peer runs.  Node 22 and the npm packages come from ``make js-peer`` (which
``make test`` runs); if they are missing, ``node_binary`` runs it.  Stopped by its pid, always.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import threading
import time
from pathlib import Path
from typing import Any

from tests.procs import ROOT

PEER_DIR = ROOT / "tests" / "js" / "libp2p"
SCRIPT = PEER_DIR / "peer.mjs"


def node_binary() -> str:
    if not (PEER_DIR / "node_modules" / ".installed").exists():
        subprocess.run(["make", "-s", "js-peer"], cwd=ROOT, check=True, timeout=600)
    bin_dir = subprocess.run(
        [str(ROOT / "scripts" / "ensure-node.sh")], cwd=ROOT, check=True, capture_output=True, text=True, timeout=600
    ).stdout.strip()
    return str(Path(bin_dir) / "node")


class JsPeer:
    def __init__(self, node: str, *args: str, log: Path) -> None:
        self.args = [node, str(SCRIPT), *args]
        self.log = log
        self.events: list[dict[str, Any]] = []
        self._lock = threading.Lock()
        self.popen: subprocess.Popen[str] | None = None
        self._reader: threading.Thread | None = None

    def start(self) -> JsPeer:
        stderr = self.log.open("a")
        self.popen = subprocess.Popen(
            self.args, cwd=PEER_DIR, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=stderr, text=True
        )
        stderr.close()
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()
        return self

    def _read(self) -> None:
        assert self.popen is not None and self.popen.stdout is not None
        for line in self.popen.stdout:
            try:
                event = json.loads(line)
            except ValueError:
                event = {"event": "unparsed", "line": line.rstrip()}
            with self._lock:
                self.events.append(event)
            with self.log.open("a") as handle:
                handle.write(line)

    def wait_for(self, name: str, timeout: float = 30.0) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            with self._lock:
                for event in self.events:
                    if event.get("event") == name:
                        return event
                    if event.get("event") == "error":
                        raise AssertionError(f"the js peer failed: {event.get('error')}")
            if self.popen is not None and self.popen.poll() is not None and self._reader is not None:
                self._reader.join(1)
                with self._lock:
                    if not any(event.get("event") == name for event in self.events):
                        raise AssertionError(f"the js peer exited ({self.popen.returncode}) without {name!r}: "
                                             f"{self.events[-5:]}\n{self.log.read_text()[-2000:]}")  # fmt: skip
            time.sleep(0.05)
        raise TimeoutError(f"no {name!r} from the js peer within {timeout}s: {self.events[-5:]}")

    def replies(self) -> dict[str, Any]:
        """``client`` mode: the reply to each op it sent, by op."""
        with self._lock:
            return {event["op"]: event for event in self.events if event.get("event") == "reply"}

    def wait_exit(self, timeout: float = 60.0) -> int:
        assert self.popen is not None
        code = self.popen.wait(timeout=timeout)
        if self._reader is not None:
            self._reader.join(5)
        return code

    def stop(self) -> None:
        if self.popen is not None and self.popen.poll() is None:
            os.kill(self.popen.pid, signal.SIGTERM)
            try:
                self.popen.wait(timeout=10)
            except subprocess.TimeoutExpired:
                os.kill(self.popen.pid, signal.SIGKILL)
                self.popen.wait(timeout=10)
        if self.popen is not None:
            if self._reader is not None:
                self._reader.join(5)
            for pipe in (self.popen.stdin, self.popen.stdout):
                if pipe is not None:
                    pipe.close()
