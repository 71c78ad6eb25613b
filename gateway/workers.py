"""``GATEWAY_WORKERS`` > 1: one parent process, N gateway workers on the same port.

The parent owns what must outlive any one worker and starts the workers:

* the **listening sockets**: one per worker on the same address and port
  (``SO_REUSEPORT``: the kernel spreads new connections over them, and each
  worker accepts only from its own queue), plus each worker's private Unix
  socket in a fresh ``0700`` directory (``gateway/worker_links.py``).  A worker
  that dies leaves its sockets open here: connections and relayed requests
  queue until its replacement accepts them, nothing is refused;
* the **workers**: ``python -m gateway`` again, with the same options and
  environment, plus hidden options naming the inherited sockets and its index.
  Each builds its own app and its own bridge connection to the sidecar; each
  writes its index on a pipe once it serves;
* **readiness and signals**: ``READY=1`` to systemd once every worker serves;
  SIGTERM/SIGINT is passed to every worker once (each drains its calls, as a
  single gateway does) and the parent exits with 0 once all have exited 0;
* **restarts**: a worker that exits on its own is started again, unless that
  happened ``RESTART_LIMIT`` times within ``RESTART_WINDOW`` seconds: then the
  gateway stops with exit code 1.  A worker that fails before the pool is ready
  (bad key file, say) stops the start with its exit code.

The parent imports neither the app nor asyncio: it blocks in ``select`` on the
readiness pipe and a signal wake-up pipe.
"""

from __future__ import annotations

import collections
import logging
import os
import select
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import FrameType

from gateway.listeners import ListenError, bind_tcp, bind_unix, describe
from gateway.settings import GatewaySettings
from shared_schema import sd_notify
from shared_schema.parent_death import die_with_parent

log = logging.getLogger("gateway.workers")

RESTART_LIMIT = 5
RESTART_WINDOW = 60.0
STOP_MARGIN = 10.0
"""Seconds past GATEWAY_GRACEFUL_SHUTDOWN_SECONDS before a worker that has not exited is killed."""


@dataclass
class _Worker:
    index: int
    public: list[socket.socket]
    private: socket.socket
    process: subprocess.Popen[bytes] | None = None
    ready: bool = False
    exits: collections.deque[float] = field(default_factory=lambda: collections.deque(maxlen=RESTART_LIMIT))


class WorkerPool:
    def __init__(self, settings: GatewaySettings, argv: Sequence[str], *, backlog: int) -> None:
        self.settings = settings
        self.argv = list(argv)
        self.count = settings.workers
        self.backlog = backlog
        self.workers: list[_Worker] = []
        self.directory: Path | None = None
        self._ready_r, self._ready_w = os.pipe()
        self._wake_r, self._wake_w = os.pipe()
        os.set_blocking(self._wake_w, False)  # signal.set_wakeup_fd's requirement
        os.set_blocking(self._wake_r, False)
        self._stop_signal: int | None = None

    # -- sockets ---------------------------------------------------------------------------------------
    def bind(self) -> None:
        """Every worker's sockets, before any worker starts; raises ``ListenError`` (nothing left open)."""
        settings = self.settings
        share = not hasattr(socket, "SO_REUSEPORT")  # elsewhere: one socket, every worker accepts from it
        first = bind_tcp(settings.host, settings.port, backlog=self.backlog, reuse_port=not share)
        try:
            port = first[0].getsockname()[1]
            base = os.environ.get("RUNTIME_DIRECTORY", "").split(":")[0] or None  # systemd's, when it made one
            self.directory = Path(tempfile.mkdtemp(prefix="mcp-p2p-gateway-", dir=base))
            for index in range(self.count):
                public = (
                    first
                    if index == 0 or share
                    else bind_tcp(settings.host, port, backlog=self.backlog, reuse_port=True)
                )
                private = bind_unix(self.directory / f"worker-{index}.sock", backlog=self.backlog)
                self.workers.append(_Worker(index, public, private))
        except (ListenError, OSError):
            for sock in first:
                sock.close()
            self.close()
            raise

    def close(self) -> None:
        for worker in self.workers:
            for sock in worker.public:
                sock.close()
            worker.private.close()
        if self.directory is not None:
            for path in self.directory.glob("worker-*.sock"):
                path.unlink(missing_ok=True)
            self.directory.rmdir()
            self.directory = None

    # -- workers ----------------------------------------------------------------------------------------
    def _spawn(self, worker: _Worker) -> None:
        assert self.directory is not None
        fds = [sock.fileno() for sock in worker.public]
        command = [
            sys.executable,
            "-m",
            "gateway",
            *self.argv,
            "--worker-index",
            str(worker.index),
            "--worker-dir",
            str(self.directory),
            "--listen-fds",
            ",".join(map(str, fds)),
            "--private-fd",
            str(worker.private.fileno()),
            "--ready-fd",
            str(self._ready_w),
        ]
        env = {key: value for key, value in os.environ.items() if key != "NOTIFY_SOCKET"}  # the parent tells systemd
        worker.ready = False
        worker.process = subprocess.Popen(
            command,
            env=env,
            pass_fds=[*fds, worker.private.fileno(), self._ready_w],
            process_group=0,  # a terminal's Ctrl-C reaches the parent only, which passes one SIGTERM on
            preexec_fn=die_with_parent(),
        )
        log.info("worker %d started (pid %d)", worker.index, worker.process.pid)

    def _on_signal(self, signum: int, _frame: FrameType | None) -> None:
        if self._stop_signal is None:
            self._stop_signal = signum

    def run(self) -> int:
        """Start the workers and look after them until a stop is asked for or the pool fails; the exit code."""
        for signum in (signal.SIGTERM, signal.SIGINT):
            signal.signal(signum, self._on_signal)
        signal.set_wakeup_fd(self._wake_w, warn_on_full_buffer=False)
        for worker in self.workers:
            self._spawn(worker)
        started = time.monotonic()
        announced = False
        while self._stop_signal is None:
            readable, _, _ = select.select([self._ready_r, self._wake_r], [], [], 0.5)
            if self._ready_r in readable:
                for line in os.read(self._ready_r, 4096).split():
                    self.workers[int(line)].ready = True
            if self._wake_r in readable:
                os.read(self._wake_r, 4096)
            if not announced and all(worker.ready for worker in self.workers):
                announced = True
                where = ", ".join(describe(sock) for sock in self.workers[0].public)
                log.info(
                    "%d workers serving HTTP on %s (ready in %.1f s)", self.count, where, time.monotonic() - started
                )
                sd_notify.notify("READY=1", f"STATUS={self.count} workers serving HTTP on {where}")
            failed = self._look_after(announced)
            if failed is not None:
                self._stop()
                return failed
        log.info("%s received: stopping %d workers", signal.Signals(self._stop_signal).name, self.count)
        sd_notify.notify("STOPPING=1", "STATUS=draining")
        return self._stop()

    def _look_after(self, announced: bool) -> int | None:
        """Restart workers that exited on their own; the exit code to stop with when that is not right."""
        for worker in self.workers:
            assert worker.process is not None
            code = worker.process.poll()
            if code is None:
                continue
            if not announced and not worker.ready:
                log.error("worker %d exited with %d before it served: stopping the gateway", worker.index, code)
                return code or 1
            now = time.monotonic()
            worker.exits.append(now)
            if len(worker.exits) == RESTART_LIMIT and now - worker.exits[0] < RESTART_WINDOW:
                log.error(
                    "worker %d exited %d times within %.0f s (last: %d): stopping the gateway",
                    worker.index,
                    RESTART_LIMIT,
                    RESTART_WINDOW,
                    code,
                )
                return 1
            log.warning("worker %d exited with %d; starting it again (its MCP sessions are gone)", worker.index, code)
            self._spawn(worker)
        return None

    def _stop(self) -> int:
        """SIGTERM to every worker once, wait for all (killing those past the grace period); the exit code."""
        for worker in self.workers:  # no new connections here; the workers close their own copies as they drain
            for sock in worker.public:
                sock.close()
        live = [
            worker.process for worker in self.workers if worker.process is not None and worker.process.poll() is None
        ]
        for process in live:
            process.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + self.settings.graceful_shutdown_seconds + STOP_MARGIN
        codes: list[int] = []
        for worker in self.workers:
            if worker.process is None:
                continue
            process = worker.process
            try:
                code = process.wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                log.error("worker %d did not stop in time; killing it", worker.index)
                process.kill()
                code = process.wait()
            codes.append(code)
        self.close()
        # A worker stopped by our SIGTERM before its own handler was installed (still starting) stopped cleanly.
        failed = next((code for code in codes if code not in (0, -signal.SIGTERM)), 0)
        return failed if failed >= 0 else 1  # killed by another signal: a failure, not a negative exit code


def run_pool(settings: GatewaySettings, argv: Sequence[str], *, backlog: int) -> int:
    pool = WorkerPool(settings, argv, backlog=backlog)
    try:
        pool.bind()
    except ListenError as exc:
        print(f"gateway cannot start: {exc} (GATEWAY_HOST, GATEWAY_PORT)", file=sys.stderr)
        return 1
    except OSError as exc:  # the workers' socket directory
        print(f"gateway cannot start: cannot make the workers' private sockets: {exc}", file=sys.stderr)
        return 1
    return pool.run()
