"""The ingest edge: a ZeroMQ SUB socket, validation, and per-sensor channels with their counters.

Knows the wire and the mailbox, nothing of plugins. Runs on the event-loop thread; the only
state it shares with compute threads is the mailbox, which is thread-safe.
"""

from __future__ import annotations

import asyncio
import collections
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import zmq
import zmq.asyncio

from sage_runtime.config import IngestSection, SensorSection
from sage_runtime.logs import RejectionLog
from sage_runtime.records import Frame
from sage_runtime.mailbox import Lease, Mailbox, WriteStatus
from sage_runtime.edges.security import EdgeSecurity, bind_edge
from sage_runtime.edges.tap import IngestTap
from sage_runtime.wire import DTYPES, IngestMessage, WireError, decode_ingest, torch_dtype

log = logging.getLogger("sage.ingest")

#: Hard libzmq limit per message part: larger parts make libzmq drop the peer, so it sits well above
#: the daemon's own `max_message_bytes` check, which counts what it rejects.
LIBZMQ_LIMIT_FACTOR = 4
LATEST_DEPTH = 4  # slots per latest channel: the writer always finds one no reader holds


def parse_policy(policy: str) -> tuple[str, int]:
    """'latest' -> ('latest', 1); 'fifo:16' -> ('fifo', 16)."""
    if policy == "latest":
        return "latest", 1
    return "fifo", int(policy.split(":", 1)[1])


@dataclass
class Sensor:
    """One registered sensor: its policy, where its frames wait, and what happened to them."""

    sensor_id: str
    kind: str
    policy: str
    depth: int
    modality: str
    dtype: str | None = None
    max_numel: int = 0
    expected_hz: float | None = None
    channel: Any = None  # mailbox channel for tensors
    queue: collections.deque = field(default_factory=collections.deque)  # text/event/reward
    received: int = 0      # valid frames admitted
    accepted: int = 0      # frames taken by a tick
    skipped: int = 0       # `latest`: superseded before a tick took them
    dropped: int = 0       # `fifo`: overflow; or no free slot
    last_seq: int = -1
    last_ts_ns: int = 0
    last_rx: float = 0.0   # monotonic seconds
    pending_seq: int = -1  # latest: the newest admitted frame not yet taken
    taken_seq: int = -1
    seq_gaps: int = 0

    def stats(self, now: float) -> dict[str, Any]:
        return {
            "kind": self.kind, "policy": self.policy if self.policy == "latest" else f"fifo:{self.depth}",
            "modality": self.modality, "expected_hz": self.expected_hz, "received": self.received,
            "accepted": self.accepted,
            "skipped": self.skipped, "dropped": self.dropped, "pending": self.pending(),
            "last_seq": self.last_seq, "seq_gaps": self.seq_gaps,
            "age_ms": round((now - self.last_rx) * 1e3, 1) if self.last_rx else None,
        }

    def pending(self) -> int:
        if self.policy == "latest":
            return int(self.pending_seq > self.taken_seq)
        return len(self.queue) if self.channel is None else self.channel.stats()["queued"]


def _modality(kind: str, shape: tuple[int, ...] | None) -> str:
    if kind != "tensor":
        return kind
    if shape is not None and len(shape) == 3 and shape[-1] in (1, 3, 4):
        return "image"
    if shape is not None and len(shape) == 2 and min(shape) > 1:
        return "image"
    return "vector"


class SensorTable:
    """Sensors by id; admits validated messages into their channels and hands frames to the tick."""

    def __init__(self, cfg: IngestSection, mailbox: Mailbox) -> None:
        self.cfg = cfg
        self.mailbox = mailbox
        self.sensors: dict[str, Sensor] = {}
        self.rejected: collections.Counter[str] = collections.Counter()
        self.last_rejection: dict[str, str] = {}
        self.rejection_log = RejectionLog(log)

    def reject(self, reason: str, message: str, sensor: str | None = None) -> None:
        self.rejected[reason] += 1
        self.last_rejection[reason] = message
        self.rejection_log.note(sensor, reason, message)

    def _new_sensor(self, msg: IngestMessage) -> tuple[Sensor, tuple[int, ...] | None]:
        """The sensor a first message would register, and its channel shape; nothing is allocated yet."""
        declared: SensorSection | None = self.cfg.sensors.get(msg.sensor)
        if declared is None and not self.cfg.allow_undeclared:
            raise WireError("undeclared", f"sensor {msg.sensor!r} is not declared and allow_undeclared is off")
        if len(self.sensors) >= self.cfg.max_sensors:
            raise WireError("undeclared", f"sensor limit of {self.cfg.max_sensors} reached")
        if declared is not None and declared.kind != msg.kind:
            raise WireError("declared_mismatch", f"sensor {msg.sensor!r} is declared as {declared.kind}")
        default = self.cfg.default_tensor_policy if msg.kind == "tensor" else self.cfg.default_fifo_policy
        policy, depth = parse_policy((declared.policy if declared else None) or default)
        modality = (declared.modality if declared else None) or _modality(msg.kind, msg.shape)
        sensor = Sensor(msg.sensor, msg.kind, policy, depth, modality,
                        expected_hz=declared.expected_hz if declared else None)
        shape = None
        if msg.kind == "tensor":
            dtype = (declared.dtype if declared else None) or msg.dtype
            if dtype not in DTYPES:
                raise WireError("declared_mismatch", f"declared dtype {dtype!r} is not a wire dtype")
            shape = tuple(declared.max_shape) if declared and declared.max_shape else msg.shape
            sensor.dtype = dtype
            sensor.max_numel = _numel(shape)
        return sensor, shape

    def _register(self, sensor: Sensor, shape: tuple[int, ...] | None) -> None:
        """Allocate the sensor's channel and add it to the table: only once its first frame fits."""
        if shape is not None:
            sensor.channel = self.mailbox.register(
                f"sensor/{sensor.sensor_id}", kind="focus", dtype=torch_dtype(sensor.dtype), max_shape=shape,
                policy="latest" if sensor.policy == "latest" else "fifo",
                depth=LATEST_DEPTH if sensor.policy == "latest" else sensor.depth)
        self.sensors[sensor.sensor_id] = sensor
        log.info("sensor %s registered: kind=%s policy=%s modality=%s", sensor.sensor_id, sensor.kind,
                 sensor.policy if sensor.policy == "latest" else f"fifo:{sensor.depth}", sensor.modality)

    @staticmethod
    def _check_fits(sensor: Sensor, msg: IngestMessage) -> None:
        if sensor.kind != msg.kind:
            raise WireError("declared_mismatch", f"sensor {msg.sensor!r} sends {sensor.kind}, got {msg.kind}")
        if msg.kind == "tensor":
            if msg.dtype != sensor.dtype:
                raise WireError("declared_mismatch", f"sensor {msg.sensor!r} sends {sensor.dtype}, got {msg.dtype}")
            if _numel(msg.shape) > sensor.max_numel:
                raise WireError("declared_mismatch",
                                f"frame of {_numel(msg.shape)} elements exceeds the channel's {sensor.max_numel}")

    def admit(self, msg: IngestMessage) -> None:
        """Put a validated message in its sensor's channel; raises WireError if it does not fit.
        A message that is refused never registers its sensor."""
        sensor = self.sensors.get(msg.sensor)
        if sensor is None:
            sensor, shape = self._new_sensor(msg)
            self._check_fits(sensor, msg)
            self._register(sensor, shape)
        else:
            self._check_fits(sensor, msg)
        if msg.kind == "tensor":
            meta = {**msg.meta, "_wire_seq": msg.seq}
            result = sensor.channel.write_bytes(msg.payload, msg.shape, meta=meta, ts_ns=msg.ts_ns)
            if result.status == WriteStatus.REJECTED:
                raise WireError("channel", f"sensor {msg.sensor!r}: its channel refused the frame ({result.reason})")
            if result.status == WriteStatus.DROPPED:
                sensor.dropped += 1
            elif sensor.policy == "latest":
                if sensor.pending_seq > sensor.taken_seq:
                    sensor.skipped += 1
                sensor.pending_seq = result.seq
            elif result.status == WriteStatus.OVERWROTE_OLDEST:
                sensor.dropped += 1
        else:
            if sensor.policy == "latest":
                if sensor.queue:
                    sensor.skipped += 1
                    sensor.queue.clear()
                sensor.queue.append(msg)
                sensor.pending_seq += 1
            else:
                if len(sensor.queue) >= sensor.depth:
                    sensor.queue.popleft()
                    sensor.dropped += 1
                sensor.queue.append(msg)
        if sensor.last_seq >= 0 and msg.seq != sensor.last_seq + 1:
            sensor.seq_gaps += 1
        sensor.received += 1
        sensor.last_seq = msg.seq
        sensor.last_ts_ns = msg.ts_ns
        sensor.last_rx = time.monotonic()

    def take(self) -> tuple[dict[str, list[Frame]], list[Lease]]:
        """Every frame waiting for the tick, per sensor, oldest first; leases to release after the tick."""
        frames: dict[str, list[Frame]] = {}
        leases: list[Lease] = []
        for sensor in self.sensors.values():
            got: list[Frame] = []
            if sensor.channel is not None:
                if sensor.policy == "latest":
                    if sensor.pending_seq > sensor.taken_seq:
                        lease = sensor.channel.read_latest(after_seq=sensor.taken_seq)
                        if lease is not None:
                            leases.append(lease)
                            got.append(Frame(sensor.sensor_id, int(lease.meta.get("_wire_seq", lease.seq)),
                                             lease.ts_ns, "tensor", lease.tensor, lease.meta))
                        sensor.taken_seq = sensor.pending_seq
                else:
                    while (lease := sensor.channel.pop()) is not None:
                        leases.append(lease)
                        got.append(Frame(sensor.sensor_id, int(lease.meta.get("_wire_seq", lease.seq)),
                                         lease.ts_ns, "tensor", lease.tensor, lease.meta))
            else:
                while sensor.queue:
                    msg = sensor.queue.popleft()
                    got.append(Frame(sensor.sensor_id, msg.seq, msg.ts_ns, msg.kind, msg.payload, msg.meta))
                if sensor.policy == "latest":
                    sensor.taken_seq = sensor.pending_seq
            if got:
                sensor.accepted += len(got)
                frames[sensor.sensor_id] = got
        return frames, leases

    def stats(self) -> dict[str, Any]:
        now = time.monotonic()
        return {"sensors": {sid: s.stats(now) for sid, s in self.sensors.items()},
                "rejected": dict(self.rejected), "last_rejection": dict(self.last_rejection)}


def _numel(shape: tuple[int, ...] | None) -> int:
    n = 1
    for d in shape or ():
        n *= d
    return n


def _topic_sensor(parts: list[Any]) -> str | None:
    """The sensor id a message's topic part names (`sensor/<id>`), for logs; None when unreadable."""
    try:
        topic = parts[0].bytes if hasattr(parts[0], "bytes") else bytes(parts[0])
        return topic[len(b"sensor/"):64 + len(b"sensor/")].decode("utf-8", "replace") \
            if topic.startswith(b"sensor/") else None
    except (IndexError, TypeError, ValueError):
        return None


class IngestServer:
    """Owns the SUB socket(s); one task reads them. `on_input` wakes the tick loop.

    With CurveZMQ keys, TCP endpoints get their own CURVE socket and ipc ones stay plain (file modes
    guard them): a security option applies to every endpoint of a socket."""

    def __init__(self, ctx: zmq.asyncio.Context, endpoints: list[str], table: SensorTable,
                 on_input: Callable[[], None], security: EdgeSecurity | None = None, *,
                 tap: IngestTap | None = None) -> None:
        self.table = table
        self.tap = tap  # admitted frames go to it only while a recorder subscribes
        self.on_input = on_input
        cfg = table.cfg
        self.socks, self.endpoints = bind_edge(ctx, zmq.SUB, endpoints, "ingest", {
            zmq.MAXMSGSIZE: cfg.max_message_bytes * LIBZMQ_LIMIT_FACTOR, zmq.RCVHWM: cfg.rcvhwm,
            zmq.LINGER: 0, zmq.SUBSCRIBE: b""}, security)
        self.messages = 0
        self.internal_errors = 0
        self.paused = False

    def handle(self, parts: list[Any]) -> None:
        self.messages += 1
        cfg = self.table.cfg
        size = sum(len(p) if isinstance(p, bytes) else p.buffer.nbytes for p in parts)
        if size > cfg.max_message_bytes:
            self.table.reject("oversize", f"message of {size} bytes exceeds max_message_bytes {cfg.max_message_bytes}",
                              _topic_sensor(parts))
            return
        try:
            msg = decode_ingest(parts, max_elements=cfg.max_elements, reject_non_finite=cfg.reject_non_finite)
            self.table.admit(msg)
            if self.tap is not None and self.tap.active:
                self.tap.publish(msg.sensor, parts)
        except WireError as exc:
            self.table.reject(exc.reason, str(exc), _topic_sensor(parts))
        except Exception:  # noqa: BLE001 - a bug here must cost one message, never the ingest task
            self.internal_errors += 1
            log.exception("ingest failed on a message (counted as ingest.internal_errors)")

    async def _pump(self, sock: zmq.asyncio.Socket) -> None:
        while True:
            parts = await sock.recv_multipart(copy=False)
            self.handle(parts)
            # Drain what is already queued before waking the tick, so a burst costs one wake-up.
            while sock.getsockopt(zmq.EVENTS) & zmq.POLLIN:
                self.handle(await sock.recv_multipart(copy=False))
            self.on_input()

    async def run(self) -> None:
        await asyncio.gather(*(self._pump(sock) for sock in self.socks))

    def close(self) -> None:
        for sock in self.socks:
            sock.close(linger=0)
