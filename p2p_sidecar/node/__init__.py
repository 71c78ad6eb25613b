"""The sidecar's libp2p node: identity, peers, liveness, discovery, and the peer protocol.

Deliberately empty: importing ``p2p_sidecar.node`` must not import libp2p
(about 0.6 s and 50 MB).  ``wire``, ``peers``, ``liveness``, ``connections``,
``peer_store``, ``capabilities`` and ``addresses`` never import it; their
state machines are synchronous and free of I/O.  ``host`` builds the node.
"""
