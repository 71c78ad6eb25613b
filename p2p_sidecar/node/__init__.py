"""The sidecar's libp2p node: identity, peers, liveness, discovery, and the peer protocol.

Deliberately empty: importing ``p2p_sidecar.node`` must not import libp2p
(about 0.6 s and 50 MB).  The pure modules (``wire``, ``peers``,
``liveness``, ``connections``, ``peer_store``, ``capabilities``,
``addresses``) import neither libp2p nor Trio's I/O; ``host`` builds the node.
"""
