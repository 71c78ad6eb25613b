"""The durable task queue: SQLite-backed tasks, leases, workers, and their spread over peers.

Public surface: ``QueueService`` (built and started by ``p2p_sidecar.main``),
``TaskStore`` (its database, opened by the same), ``register_queue_tools``
(the 15 tools), and ``PeerRpc`` (what the libp2p node must provide for tasks
to move between peers).  Design: docs/taskqueue.md.
"""

from p2p_sidecar.taskqueue.protocol import PeerRpc
from p2p_sidecar.taskqueue.service import QueueService
from p2p_sidecar.taskqueue.store import TaskStore
from p2p_sidecar.taskqueue.tools import register_queue_tools

__all__ = ["PeerRpc", "QueueService", "TaskStore", "register_queue_tools"]
