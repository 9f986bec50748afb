"""The ingest edge: a ZeroMQ SUB socket, validation, and per-sensor channels with their counters.

Knows the wire and the mailbox, nothing of plugins. Runs on the event-loop thread; the only
state it shares with compute threads is the mailbox, which is thread-safe.
"""

from __future__ import annotations

import asyncio
import collections
import logging
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import zmq
import zmq.asyncio

from sage_runtime.config import LATEST_SLOTS, CapacitySection, IngestSection, SensorSection, receive_hwm
from sage_runtime.logs import RejectionLog
from sage_runtime.records import Frame
from sage_runtime.mailbox import Lease, Mailbox, WriteStatus
from sage_runtime.edges.receive import receive_bounded
from sage_runtime.edges.security import EdgeSecurity, bind_edge
from sage_runtime.edges.tap import IngestTap
from sage_runtime.edges.shm_ingest import ShmIngest
from sage_runtime.wire import DTYPES, IngestMessage, WireError, decode_ingest, encode_ingest, torch_dtype

log = logging.getLogger("sage.ingest")

#: ZMQ_MAXMSGSIZE (per part) is this many times max_message_bytes: a part a little over is still
#: read and counted as `oversize`; a part far over makes libzmq drop the peer before allocating it.
#: The total over all parts, and the number of parts, the daemon counts itself, part by part.
PART_LIMIT_FACTOR = 2
LATEST_DEPTH = LATEST_SLOTS
#: Longest stretch the ingest task reads messages before it lets the control socket and the tick run.
DRAIN_S = 0.005  # slots per latest channel: the writer always finds one no reader holds


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
    reserved_bytes: int = 0  # tensor: the channel's preallocated slots; others: bytes queued now

    def stats(self, now: float) -> dict[str, Any]:
        return {
            "kind": self.kind, "policy": self.policy if self.policy == "latest" else f"fifo:{self.depth}",
            "modality": self.modality, "expected_hz": self.expected_hz, "received": self.received,
            "accepted": self.accepted,
            "skipped": self.skipped, "dropped": self.dropped, "pending": self.pending(),
            "last_seq": self.last_seq, "seq_gaps": self.seq_gaps, "reserved_bytes": self.reserved_bytes,
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

    def __init__(self, cfg: IngestSection, mailbox: Mailbox, capacity: CapacitySection | None = None) -> None:
        self.cfg = cfg
        self.mailbox = mailbox
        self.capacity = capacity or CapacitySection(max_sensors=cfg.max_sensors)
        self.reserved_bytes = 0  # every sensor's reserved_bytes together, against capacity.mailbox_bytes
        self.sensors: dict[str, Sensor] = {}
        self.rejected: collections.Counter[str] = collections.Counter()
        self.last_rejection: dict[str, str] = {}
        self.rejection_log = RejectionLog(log, interval_s=cfg.rejection_log_interval_s)

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
            raise WireError("sensor_limit", f"sensor limit of {self.cfg.max_sensors} reached (capacity.max_sensors)")
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
            sensor.max_numel = math.prod(shape or ())
        return sensor, shape

    def _reserve(self, sensor: Sensor, nbytes: int) -> None:
        """Count `nbytes` against the sensor's and the mailbox's budgets, or refuse (nothing counted)."""
        cap = self.capacity
        if sensor.reserved_bytes + nbytes > cap.sensor_bytes:
            raise WireError("sensor_budget", f"sensor {sensor.sensor_id!r} would hold {sensor.reserved_bytes + nbytes} "
                                             f"bytes, more than capacity.sensor_bytes {cap.sensor_bytes}")
        if self.reserved_bytes + nbytes > cap.mailbox_bytes:
            raise WireError("mailbox_budget", f"the mailbox would hold {self.reserved_bytes + nbytes} bytes, more "
                                              f"than capacity.mailbox_bytes {cap.mailbox_bytes}")
        sensor.reserved_bytes += nbytes
        self.reserved_bytes += nbytes

    def _release(self, sensor: Sensor, nbytes: int) -> None:
        sensor.reserved_bytes -= nbytes
        self.reserved_bytes -= nbytes

    def _register(self, sensor: Sensor, shape: tuple[int, ...] | None) -> None:
        """Allocate the sensor's channel and add it to the table: only once its first frame fits
        and its slots (depth x frame size) fit the capacity budgets."""
        if shape is not None:
            slots = LATEST_DEPTH if sensor.policy == "latest" else 2 * sensor.depth  # fifo: queued + leased
            self._reserve(sensor, slots * math.prod(shape or ()) * torch_dtype(sensor.dtype).itemsize)
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
            numel = math.prod(msg.shape or ())
            if numel > sensor.max_numel:
                raise WireError("declared_mismatch",
                                f"frame of {numel} elements exceeds the channel's {sensor.max_numel}")

    def admit(self, msg: IngestMessage, nbytes: int | None = None) -> None:
        """Put a validated message in its sensor's channel; raises WireError if it does not fit.
        A message that is refused never registers its sensor. nbytes: its wire size (what a queued
        text/event/reward frame counts against the budgets)."""
        sensor = self.sensors.get(msg.sensor)
        if sensor is None:
            sensor, shape = self._new_sensor(msg)
            self._check_fits(sensor, msg)
            if shape is None:  # a queued frame: its room is checked before the sensor exists
                self._reserve(sensor, _payload_bytes(msg) if nbytes is None else nbytes)
                self._release(sensor, sensor.reserved_bytes)
            self._register(sensor, shape)
        else:
            self._check_fits(sensor, msg)
        if msg.kind == "tensor":
            meta = {**msg.meta, "_wire_seq": msg.seq}
            # adopt: the received zmq frame becomes the slot's storage (no copy) where the mailbox can
            result = sensor.channel.write_bytes(msg.payload, msg.shape, meta=meta, ts_ns=msg.ts_ns, adopt=True)
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
            self._queue(sensor, msg, _payload_bytes(msg) if nbytes is None else nbytes)
        if sensor.last_seq >= 0 and msg.seq != sensor.last_seq + 1:
            sensor.seq_gaps += 1
        sensor.received += 1
        sensor.last_seq = msg.seq
        sensor.last_ts_ns = msg.ts_ns
        sensor.last_rx = time.monotonic()

    def _queue(self, sensor: Sensor, msg: IngestMessage, nbytes: int) -> None:
        """Queue a text/event/reward frame: `latest` replaces, `fifo` evicts the oldest (counted) to
        make room in depth and in the sensor's byte budget; the mailbox budget refuses instead."""
        if nbytes > self.capacity.sensor_bytes:  # refused before anything queued is given up for it
            raise WireError("sensor_budget", f"frame of {nbytes} bytes exceeds capacity.sensor_bytes "
                                             f"{self.capacity.sensor_bytes}")
        if sensor.policy == "latest" and sensor.queue:
            sensor.skipped += 1
            self._drop_queued(sensor, len(sensor.queue))
        elif sensor.policy != "latest":
            if len(sensor.queue) >= sensor.depth:
                self._drop_queued(sensor, 1)
                sensor.dropped += 1
            while sensor.queue and sensor.reserved_bytes + nbytes > self.capacity.sensor_bytes:
                self._drop_queued(sensor, 1)
                sensor.dropped += 1
        self._reserve(sensor, nbytes)
        sensor.queue.append((msg, nbytes))
        if sensor.policy == "latest":
            sensor.pending_seq += 1

    def _drop_queued(self, sensor: Sensor, count: int) -> None:
        for _ in range(count):
            self._release(sensor, sensor.queue.popleft()[1])

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
                                             lease.ts_ns, "tensor", lease.tensor, lease.meta, lease.stable))
                        sensor.taken_seq = sensor.pending_seq
                else:
                    while (lease := sensor.channel.pop()) is not None:
                        leases.append(lease)
                        got.append(Frame(sensor.sensor_id, int(lease.meta.get("_wire_seq", lease.seq)),
                                         lease.ts_ns, "tensor", lease.tensor, lease.meta, lease.stable))
            else:
                while sensor.queue:
                    msg, nbytes = sensor.queue.popleft()
                    self._release(sensor, nbytes)
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
                "rejected": dict(self.rejected), "last_rejection": dict(self.last_rejection),
                "capacity": self.capacity_status()}

    def capacity_status(self) -> dict[str, Any]:
        cap = self.capacity
        return {"sensors": len(self.sensors), "max_sensors": self.cfg.max_sensors,
                "mailbox_bytes": self.reserved_bytes, "mailbox_budget": cap.mailbox_bytes,
                "sensor_budget": cap.sensor_bytes}

    def capacity_reasons(self) -> list[str]:
        """Health reasons: a budget at least capacity.warn_share full (the next client may be refused)."""
        share, reasons = self.capacity.warn_share, []
        if len(self.sensors) >= share * self.cfg.max_sensors:
            reasons.append(f"sensors {len(self.sensors)}/{self.cfg.max_sensors} (capacity.max_sensors)")
        if self.reserved_bytes >= share * self.capacity.mailbox_bytes:
            reasons.append(f"mailbox {self.reserved_bytes}/{self.capacity.mailbox_bytes} bytes "
                           f"(capacity.mailbox_bytes)")
        return reasons


def _payload_bytes(msg: IngestMessage) -> int:
    """What a queued non-tensor frame costs when its wire size is not known (tests, replays)."""
    if isinstance(msg.payload, str):
        return len(msg.payload)
    return len(repr(msg.payload)) if msg.payload is not None else 0


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
        self.shm = ShmIngest(table.cfg.max_sensors, table.cfg.reject_non_finite) if table.cfg.shm else None
        self.tap = tap  # admitted frames go to it only while a recorder subscribes
        self.on_input = on_input
        cfg = table.cfg
        self.socks, self.endpoints = bind_edge(ctx, zmq.SUB, endpoints, "ingest", {
            zmq.MAXMSGSIZE: cfg.max_message_bytes * PART_LIMIT_FACTOR,
            zmq.RCVHWM: receive_hwm(table.capacity, cfg.max_message_bytes),
            zmq.LINGER: 0, zmq.SUBSCRIBE: b""}, security)
        self.max_parts = table.capacity.max_message_parts
        self.messages = 0
        self.internal_errors = 0

    def handle(self, parts: list[Any], size: int | None = None) -> None:
        self.messages += 1
        cfg = self.table.cfg
        if size is None:
            size = sum(len(p) if isinstance(p, bytes) else p.buffer.nbytes for p in parts)
        if size > cfg.max_message_bytes:
            self.table.reject("oversize", f"message of {size} bytes exceeds max_message_bytes {cfg.max_message_bytes}",
                              _topic_sensor(parts))
            return
        try:
            msg = decode_ingest(parts, max_elements=cfg.max_elements, reject_non_finite=cfg.reject_non_finite,
                                max_string_bytes=self.table.capacity.max_string_bytes,
                                max_text_bytes=self.table.capacity.max_text_bytes)
            if msg.shm is not None:
                self._admit_shm(msg, size)
                return
            self.table.admit(msg, size)
            if self.tap is not None and self.tap.active:
                self.tap.publish(msg.sensor, parts)
        except WireError as exc:
            self.table.reject(exc.reason, str(exc), _topic_sensor(parts))
        except Exception:  # noqa: BLE001 - a bug here must cost one message, never the ingest task
            self.internal_errors += 1
            log.exception("ingest failed on a message (counted as ingest.internal_errors)")

    def _admit_shm(self, msg: IngestMessage, size: int) -> None:
        """A frame whose bytes wait in a client's ring: resolved, size-checked and admitted like any
        other (same counters, limits and reasons)."""
        if self.shm is None:
            raise WireError("shm", "shared-memory ingest is off (ingest.shm: false)")
        limit = self.table.cfg.max_message_bytes
        assert msg.shm is not None
        if size + msg.shm.nbytes > limit:
            raise WireError("oversize", f"message of {size + msg.shm.nbytes} bytes (with its shared-memory "
                                        f"payload) exceeds max_message_bytes {limit}")
        resolved = self.shm.resolve(msg)
        self.table.admit(resolved, size + msg.shm.nbytes)
        if self.tap is not None and self.tap.active:  # recorded as an ordinary frame, payload included
            self.tap.publish(msg.sensor, encode_ingest(msg.sensor, msg.seq, "tensor", resolved.array(),
                                                       ts_ns=msg.ts_ns, meta=msg.meta or None))

    def _receive(self, raw: zmq.Socket) -> None:
        """One message through the shared bounded receive: refused (counted) before assembly."""
        cfg = self.table.cfg
        got = receive_bounded(raw, self.max_parts, cfg.max_message_bytes)
        if got.refused is None:
            self.handle(got.parts, got.size)
            return
        self.messages += 1
        self.table.reject(got.refused, got.detail("capacity.max_message_parts", "ingest.max_message_bytes",
                                                  self.max_parts, cfg.max_message_bytes))

    async def _pump(self, sock: zmq.asyncio.Socket) -> None:
        raw = zmq.Socket.shadow(sock.underlying)
        while True:
            await sock.poll(flags=zmq.POLLIN)
            # Drain what is already queued before waking the tick, so a burst costs one wake-up; but
            # at most DRAIN_S of work at a time, then yield: a flood must not starve control or the tick.
            until = time.monotonic() + DRAIN_S
            while raw.getsockopt(zmq.EVENTS) & zmq.POLLIN:
                self._receive(raw)
                if time.monotonic() >= until:
                    break
            self.on_input()
            await asyncio.sleep(0)

    async def run(self) -> None:
        await asyncio.gather(*(self._pump(sock) for sock in self.socks), self._flush_rejections(),
                             *([self.shm.run()] if self.shm is not None else []))

    async def _flush_rejections(self) -> None:
        """The per-interval rejection counts are logged when their interval ends, not only when
        the next rejection arrives (a burst that stops is still summarised)."""
        rejections = self.table.rejection_log
        while True:
            await asyncio.sleep(rejections.due_in() + 0.01)
            rejections.flush()

    def close(self) -> None:
        for sock in self.socks:
            sock.close(linger=0)
        if self.shm is not None:
            self.shm.close()
