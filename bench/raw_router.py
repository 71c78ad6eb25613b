"""The floor for scenario 2: a plain blocking pyzmq ROUTER that decodes and re-encodes msgpack, nothing else."""

from __future__ import annotations

import sys

import msgpack
import zmq


def main(endpoint: str) -> None:
    context = zmq.Context()
    sock = context.socket(zmq.ROUTER)
    sock.setsockopt(zmq.LINGER, 0)
    sock.bind(endpoint)
    print("ready", flush=True)
    while True:
        identity, frame = sock.recv_multipart()
        request = msgpack.unpackb(frame)
        sock.send_multipart([identity, msgpack.packb({"k": "result", "id": request["id"], "r": request["a"]})])


if __name__ == "__main__":
    main(sys.argv[1])
