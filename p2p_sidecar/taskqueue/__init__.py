"""The durable task queue: SQLite-backed tasks, leases, workers, and their distribution over peers.

Public surface: ``QueueService`` (started from ``p2p_sidecar.main``),
``register_queue_tools`` (the 15 tools), and ``PeerRpc`` (what the libp2p
node must provide for tasks to move between peers).  Design: docs/taskqueue.md.
"""

from p2p_sidecar.taskqueue.distribution import PeerRpc
from p2p_sidecar.taskqueue.service import QueueService
from p2p_sidecar.taskqueue.tools import register_queue_tools

__all__ = ["PeerRpc", "QueueService", "register_queue_tools"]
