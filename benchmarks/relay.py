"""The honest baseline for the daemon's frame -> result path: a minimal Python relay, SUB -> PUB.

It receives the same three-part ingest message the daemon receives and republishes it as one
message on a PUB socket, in its own process, with pyzmq's zero-copy frames. Whatever the daemon
costs above this is the runtime's own overhead (validation, mailbox, tick, plugin, result encode).

Run: python benchmarks/relay.py IN_ENDPOINT OUT_ENDPOINT   (prints "ready" once both are bound)
     python benchmarks/relay.py --count IN_ENDPOINT HWM    (the raw ingest baseline: only receives,
     in its own process like the daemon; prints "ready", then "<messages> <seconds first..last>")
"""

from __future__ import annotations

import sys

import zmq


def relay(in_ep: str, out_ep: str) -> None:
    """Forward every message until a one-part b"stop" arrives."""
    ctx = zmq.Context.instance()
    sub = ctx.socket(zmq.SUB)
    sub.setsockopt(zmq.SUBSCRIBE, b"")
    sub.setsockopt(zmq.LINGER, 0)
    sub.bind(in_ep)
    pub = ctx.socket(zmq.PUB)
    pub.setsockopt(zmq.LINGER, 0)
    pub.bind(out_ep)
    print("ready", flush=True)
    while True:
        parts = sub.recv_multipart(copy=False)
        if len(parts) == 1 and parts[0].bytes == b"stop":
            break
        pub.send_multipart(parts, copy=False)
    sub.close(0)
    pub.close(0)


def count(in_ep: str, hwm: int) -> None:
    """Receive (recv_multipart, zero-copy) until b"stop"; report how many and over how long."""
    import time

    sub = zmq.Context.instance().socket(zmq.SUB)
    sub.setsockopt(zmq.SUBSCRIBE, b"")
    sub.setsockopt(zmq.RCVHWM, hwm)
    sub.bind(in_ep)
    print("ready", flush=True)
    n, first, last = 0, 0.0, 0.0
    while True:
        parts = sub.recv_multipart(copy=False)
        if len(parts) == 1 and parts[0].bytes == b"stop":
            break
        if len(parts) == 1:  # a probe of the connection handshake
            continue
        last = time.perf_counter()
        first = first or last
        n += 1
    print(n, last - first, flush=True)
    sub.close(0)


if __name__ == "__main__":
    if sys.argv[1] == "--count":
        count(sys.argv[2], int(sys.argv[3]))
    else:
        relay(sys.argv[1], sys.argv[2])
