"""The bounded multipart receive both socket edges use (ingest SUB, control ROUTER).

libzmq hands a multipart message over part by part; assembling it first (recv_multipart) let one
client make the daemon hold 8 x 100 MiB before any size check. Here the count of parts and the total
bytes are checked as each part arrives; once over, what was kept is let go and the rest is read and
dropped at once, so a refused message never holds more than the part being read.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import zmq

#: The refusal reasons, shared by the edges' counters (ingest `rejected`, control `refused`).
TOO_MANY_PARTS = "too_many_parts"
OVERSIZE = "oversize"


@dataclass
class Received:
    """One message read whole: its parts (empty when refused), part count and total bytes."""

    parts: list[zmq.Frame] = field(default_factory=list)
    count: int = 0
    size: int = 0
    refused: str | None = None  # TOO_MANY_PARTS or OVERSIZE

    def detail(self, parts_key: str, bytes_key: str, max_parts: int, max_bytes: int) -> str:
        """A log/status line naming the limit that refused it, by its config key."""
        limit = (f"{parts_key} {max_parts}" if self.refused == TOO_MANY_PARTS else f"{bytes_key} {max_bytes}")
        return f"message of {self.count} parts, {self.size} bytes exceeds {limit}"


def receive_bounded(raw: zmq.Socket, max_parts: int, max_bytes: int) -> Received:
    """Read one message from `raw` (a message must be waiting: NOBLOCK), keeping at most `max_parts`
    parts and `max_bytes` in all; past either it is refused and nothing of it is kept."""
    got = Received()
    while True:
        frame = raw.recv(zmq.NOBLOCK, copy=False)
        got.count += 1
        got.size += len(frame)
        if got.refused is None:
            if got.count > max_parts:
                got.refused = TOO_MANY_PARTS
            elif got.size > max_bytes:
                got.refused = OVERSIZE
            if got.refused is None:
                got.parts.append(frame)
            else:
                got.parts.clear()
        del frame  # a refused part goes back to libzmq before the next is read
        if not raw.getsockopt(zmq.RCVMORE):
            return got
