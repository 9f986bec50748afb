"""The ingest tap: every admitted ingest frame, byte for byte, for recorders (`sagectl record`).

An XPUB socket on `ipc://{runtime_dir}/tap.sock`. It reports each subscription and unsubscription
(XPUB_VERBOSER), so the daemon knows whether anyone listens: with no subscriber, the ingest pays
one attribute check per frame and nothing is copied or sent. Messages:

    [b"tap/<sensor>", receive time (int64 ns since the epoch, little-endian), topic, header, payload]

the last three being the client's original wire v1 parts. A recorder that does not keep up loses
messages past SNDHWM (counted as `dropped`); the ingest never waits for it.

`stats()` (the `tap` control command, and `tap` in the status document): recorders subscribed
now and ever, and per sensor what the tap sent and dropped while someone listened.
"""

from __future__ import annotations

import collections
import contextlib
import logging
import os
import time
from pathlib import Path
from typing import Any

import zmq
import zmq.asyncio

log = logging.getLogger("sage.tap")

TAP_SOCKET = "tap.sock"
TOPIC_PREFIX = b"tap/"


class IngestTap:
    def __init__(self, ctx: zmq.asyncio.Context, runtime_dir: Path, *, sndhwm: int = 10000,
                 socket_mode: int = 0o660) -> None:
        self.path = runtime_dir / TAP_SOCKET
        self.sock = ctx.socket(zmq.XPUB)
        self.sock.setsockopt(zmq.XPUB_VERBOSER, 1)  # every subscribe and unsubscribe, so the count is exact
        self.sock.setsockopt(zmq.SNDHWM, sndhwm)
        # A PUB socket past its HWM drops silently; NODROP makes the send fail (EAGAIN) instead,
        # so `dropped` counts what a slow recorder lost (a frame then reaches no recorder).
        self.sock.setsockopt(zmq.XPUB_NODROP, 1)
        self.sock.setsockopt(zmq.LINGER, 0)
        old = os.umask(0o777 & ~socket_mode)
        try:
            self.sock.bind(f"ipc://{self.path}")
        finally:
            os.umask(old)
        self.endpoint = f"ipc://{self.path}"
        self._send = zmq.Socket.shadow(self.sock.underlying)  # plain sends from the ingest's handler
        self.subscriptions = 0
        self.subscribed_total = 0
        self.sent = 0
        self.dropped = 0
        self.sent_by_sensor: collections.Counter[str] = collections.Counter()
        self.dropped_by_sensor: collections.Counter[str] = collections.Counter()

    @property
    def active(self) -> bool:
        return self.subscriptions > 0

    def publish(self, sensor: str, parts: list[Any]) -> None:
        """Forward one admitted frame's parts; never blocks."""
        try:
            self._send.send_multipart([TOPIC_PREFIX + sensor.encode(), time.time_ns().to_bytes(8, "little"), *parts],
                                      flags=zmq.NOBLOCK, copy=False)
            self.sent += 1
            self.sent_by_sensor[sensor] += 1
        except zmq.Again:
            self.dropped += 1
            self.dropped_by_sensor[sensor] += 1

    async def run(self) -> None:
        """Count subscriptions: 0x01 + topic subscribes, 0x00 + topic unsubscribes (also sent by
        libzmq for a recorder that disconnects)."""
        while True:
            msg = await self.sock.recv()
            if msg[:1] == b"\x01":
                self.subscriptions += 1
                self.subscribed_total += 1
                log.info("tap: recorder subscribed to %r (%d active)", msg[1:].decode(errors="replace") or "*",
                         self.subscriptions)
            elif msg[:1] == b"\x00":
                self.subscriptions = max(self.subscriptions - 1, 0)

    def stats(self) -> dict[str, Any]:
        sensors = sorted({*self.sent_by_sensor, *self.dropped_by_sensor})
        return {"endpoint": self.endpoint, "subscriptions": self.subscriptions,
                "subscribed_total": self.subscribed_total, "sent": self.sent, "dropped": self.dropped,
                "sensors": {s: {"sent": self.sent_by_sensor[s], "dropped": self.dropped_by_sensor[s]} for s in sensors}}

    def close(self) -> None:
        self.sock.close(linger=0)
        with contextlib.suppress(FileNotFoundError):
            self.path.unlink()
