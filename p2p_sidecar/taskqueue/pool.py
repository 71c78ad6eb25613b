"""This node's workers, and where they find work: its own queue, and owners that hinted.

The pool is the worker side of the queue.  It creates and retires workers
(the default one from settings, those ``worker_register`` added, which it
re-creates at start), advertises the task types they run, serves the two ops
owners send to workers (``queue.hint``, ``queue.cancel``), and is every
worker's ``Feed``: which remote owners said they have work, for how long.

It never touches the owner side: this node's own queue reaches it as a
``Source`` passed in, so the pool and its workers run the same against a
remote owner and against this node.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import trio

from p2p_sidecar.taskqueue.errors import Conflict, InvalidRequest, NotFound
from p2p_sidecar.taskqueue.executors import ExecutorRegistry, LocalTools, ToolCaller
from p2p_sidecar.taskqueue.model import LeaseAnswer
from p2p_sidecar.taskqueue.peer_source import PeerSource
from p2p_sidecar.taskqueue.protocol import OP_CANCEL, OP_HINT, Hint, HintReply, PeerRpc, cancel_from_wire
from p2p_sidecar.taskqueue.sync import Broadcast
from p2p_sidecar.taskqueue.worker import Source, Worker, WorkerConfig, WorkerSpec, WorkerState

log = logging.getLogger(__name__)

DEFAULT_WORKER_ID = "local"
HINT_TTL_S = 30.0
"""How long a hint is worth pulling on without a new one."""
TOOL_TYPE = "tool"


class WorkerBook(Protocol):
    """Where registered workers are kept across restarts (the queue's store)."""

    def save_worker(self, worker_id: str, spec: dict[str, Any]) -> None: ...

    def delete_worker(self, worker_id: str) -> None: ...

    def saved_workers(self) -> list[dict[str, Any]]: ...


@dataclass
class _Hinted:
    source: PeerSource
    types: frozenset[str]
    ready: dict[str, int]
    since: float
    expires: float


class WorkerPool:
    def __init__(
        self,
        *,
        local: Source,
        executors: ExecutorRegistry,
        config: WorkerConfig,
        book: WorkerBook,
        default_slots: int,
        rpc: PeerRpc | None = None,
        boot: str = "",
        batch_bytes: int | None = None,
        allow_remote_tool: bool = False,
        call_gateway: ToolCaller | None = None,
        local_tools: LocalTools | None = None,
    ) -> None:
        self.local = local
        self.news = Broadcast()
        """Fired when work may be waiting: this node's queue announced some, or an owner hinted."""
        self.workers: dict[str, Worker] = {}
        self.draining = False
        self._executors = executors
        self._config = config
        self._book = book
        self._rpc = rpc
        self._boot = boot
        self._batch_bytes = batch_bytes
        self._allow_remote_tool = allow_remote_tool
        self._call_gateway = call_gateway
        self._local_tools = local_tools
        self._hinted: dict[str, _Hinted] = {}
        self._sources: dict[str, PeerSource] = {}
        self._new_send, self._new_recv = trio.open_memory_channel[Worker](16)
        specs = []
        if default_slots > 0:
            specs.append(WorkerSpec(DEFAULT_WORKER_ID, tuple(executors.types), default_slots))
        specs.extend(self._spec_from_saved(saved) for saved in book.saved_workers())
        for spec in specs:
            self.workers.setdefault(spec.worker_id, self._make(spec))
        if rpc is not None:
            rpc.register_op(OP_HINT, self.op_hint)
            rpc.register_op(OP_CANCEL, self.op_cancel)
        self.advertise()  # before the node dials anyone, so peers read our task types in its first hello

    # -- lifecycle ----------------------------------------------------------------------------------------------
    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Owns every worker's task: those known at start, then those ``add`` brings."""
        async with trio.open_nursery() as nursery:
            for worker in list(self.workers.values()):
                await nursery.start(self._serve, worker)
            task_status.started()
            async for worker in self._new_recv:
                await nursery.start(self._serve, worker)

    async def _serve(self, worker: Worker, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        self.news.chain(worker.wake)
        try:
            await worker.run(task_status=task_status)
        finally:
            self.news.unchain(worker.wake)
            if self.workers.get(worker.worker_id) is worker:
                del self.workers[worker.worker_id]

    def _make(self, spec: WorkerSpec) -> Worker:
        return Worker(
            spec,
            executors=self._executors,
            feed=self,
            config=self._config,
            call_gateway=self._call_gateway,
            local_tools=self._local_tools,
        )

    def stop_claiming(self) -> None:
        """Shutdown, step one: no worker takes new work; hints are declined."""
        self.draining = True
        for worker in self.workers.values():
            worker.stop_claiming()

    async def wait_idle(self) -> None:
        for worker in list(self.workers.values()):
            await worker.wait_idle()

    @property
    def running_count(self) -> int:
        return sum(len(worker.running) for worker in self.workers.values())

    @property
    def slots(self) -> int:
        return sum(worker.spec.max_concurrent for worker in self.workers.values())

    # -- workers ------------------------------------------------------------------------------------------------
    async def add(self, spec: WorkerSpec) -> Worker:
        if spec.worker_id in self.workers:
            raise Conflict(f"a worker named {spec.worker_id!r} is already registered on this node")
        unknown = sorted(set(spec.capabilities) - set(self._executors.types))
        if unknown:
            raise InvalidRequest(f"capabilities {unknown} are not task types installed here: {self._executors.types}")
        if self.draining:
            raise Conflict("the sidecar is shutting down")
        worker = self._make(spec)
        self.workers[spec.worker_id] = worker  # visible at once; _serve keeps it there
        if spec.registered:
            self._book.save_worker(spec.worker_id, spec.to_dict())
        await self._new_send.send(worker)
        await worker.ready.wait()
        self.advertise()
        self.news.fire()
        return worker

    async def remove(self, worker_id: str, *, graceful: bool, timeout: float) -> dict[str, Any]:
        worker = self.workers.get(worker_id)
        if worker is None:
            raise NotFound(f"no worker named {worker_id!r} on this node")
        self._book.delete_worker(worker_id)
        running = len(worker.running)
        worker.stop_claiming()
        finished_in_time = await worker.wait_idle(timeout) if graceful else False
        released = 0 if finished_in_time else worker.release_all("worker unregistered")
        await worker.wait_idle()
        self.advertise()
        return {"running_at_request": running, "finished": running - released, "released": released}

    def _spec_from_saved(self, saved: dict[str, Any]) -> WorkerSpec:
        capabilities = [cap for cap in saved.get("capabilities", []) if cap in self._executors]
        return WorkerSpec(
            saved["worker_id"],
            tuple(capabilities),
            int(saved.get("max_concurrent_tasks", 5)),
            resource_limits=saved.get("resource_limits") or {},
            metadata=saved.get("metadata") or {},
            registered=True,
        )

    def capabilities(self) -> list[str]:
        """Task types some worker of this node currently takes."""
        return sorted(
            {
                cap
                for worker in self.workers.values()
                if worker.state is not WorkerState.STOPPED
                for cap in worker.spec.capabilities
            }
        )

    def advertised_types(self) -> list[str]:
        """What peers may send us: every type we run, but ``tool`` only with a remote tool allowlist."""
        return [cap for cap in self.capabilities() if cap != TOOL_TYPE or self._allow_remote_tool]

    def advertise(self) -> None:
        if self._rpc is not None:
            self._rpc.advertise(self.advertised_types())

    def free_slots(self, types: Sequence[str]) -> dict[str, int]:
        """Free slots per task type (a slot of a worker running several types counts for each of them)."""
        wanted = list(types) or self.capabilities()
        return {
            task_type: sum(worker.free_slots for worker in self.workers.values() if worker.runs(task_type))
            for task_type in wanted
        }

    def notify(self, owner: str | None, task_id: str, answer: LeaseAnswer) -> bool:
        """Stop this node's attempt of a task whose lease its owner says is over."""
        return any(worker.notify(owner, task_id, answer) for worker in list(self.workers.values()))

    # -- Feed: where workers find work ------------------------------------------------------------------------------
    def owners(self, capabilities: Sequence[str]) -> list[tuple[Source, list[str], int]]:
        now = trio.current_time()
        found: list[tuple[Source, list[str], int]] = []
        for owner, hinted in sorted(self._hinted.items(), key=lambda item: item[1].since):
            if hinted.expires < now:
                del self._hinted[owner]
                continue
            types = [cap for cap in capabilities if cap in hinted.types]
            if types:
                found.append((hinted.source, types, sum(hinted.ready.get(cap, 0) for cap in types)))
        return found

    def claimed(self, source: Source, *, asked: int, got: int) -> None:
        hinted = self._hinted.get(source.owner or "")
        if hinted is None:
            return
        if got < asked:
            del self._hinted[source.owner or ""]  # that owner has nothing more for us now
        else:
            hinted.ready.clear()  # the hinted amount was for the first claim; later ones ask for what is free

    def unreachable(self, source: Source) -> None:
        self._hinted.pop(source.owner or "", None)

    def _source(self, owner: str) -> PeerSource:
        source = self._sources.get(owner)
        if source is None:
            assert self._rpc is not None
            kwargs = {} if self._batch_bytes is None else {"batch_bytes": self._batch_bytes}
            source = self._sources[owner] = PeerSource(
                self._rpc, owner, self._boot, free_slots=self.free_slots, **kwargs
            )
        return source

    # -- ops served to owners ----------------------------------------------------------------------------------------
    async def op_hint(self, peer: str, body: dict[str, Any]) -> dict[str, Any]:
        hint = Hint.from_wire(body)
        wanted = frozenset(hint.types) & set(self.advertised_types())
        if not wanted or self.draining:
            return HintReply(False, {}).to_wire()
        now = trio.current_time()
        previous = self._hinted.get(peer)
        ready = {name: count for name, count in hint.ready.items() if name in wanted}
        self._hinted[peer] = _Hinted(
            self._source(peer), wanted, ready, previous.since if previous else now, now + HINT_TTL_S
        )
        self.news.fire()
        return HintReply(True, self.free_slots(sorted(wanted))).to_wire()

    async def op_cancel(self, peer: str, body: dict[str, Any]) -> dict[str, Any]:
        task_id, _attempt = cancel_from_wire(body)
        return {"found": self.notify(peer, task_id, LeaseAnswer.CANCELLED)}

    def hinted_owners(self) -> Mapping[str, frozenset[str]]:
        """Owners whose hints this node holds now, with their types (for status views)."""
        now = trio.current_time()
        return {owner: hinted.types for owner, hinted in self._hinted.items() if hinted.expires >= now}
