"""The mailbox: named channels of preallocated tensor slots, handed between threads by seq and lease.

Why it looks like this (see docs/mailbox.md): the research mailbox lost records with two producers,
returned True when full, synced with the host on every pop and tied no lifetime to what it handed
out. Here every channel owns a ring of slots allocated once at registration; a writer reserves a slot
nobody can touch under the channel lock, copies into it outside the lock, and publishes it under
the lock with the next seq. A reader gets a `Lease`: a view of a slot that no writer reuses until
the lease is released. Full is an explicit `WriteResult`, counted. On CUDA, producer and consumer
order by events on their streams; the host never waits per handoff.
"""

from __future__ import annotations

import collections
import enum
import math
import threading
import types
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Literal, NamedTuple

import numpy as np
import torch

Kind = Literal["focus"]
Policy = Literal["latest", "fifo"]
OnFull = Literal["overwrite_oldest", "drop_newest"]

DEFAULT_DEPTH = {"latest": 3, "fifo": 8}
#: Byte copies up to this size go through memoryview (cheapest call); larger ones through numpy,
#: which releases the GIL while it copies so the compute thread is not held up.
SMALL_COPY_BYTES = 64 * 1024


class WriteStatus(enum.Enum):
    """What happened to one write. Only OK and OVERWROTE_OLDEST publish the frame."""

    OK = "ok"
    OVERWROTE_OLDEST = "overwrote_oldest"  # fifo full: the oldest unread frame was evicted for this one
    DROPPED = "dropped"                    # no slot could take it (fifo full with drop_newest, or all leased)
    REJECTED = "rejected"                  # it does not fit the channel (dtype, size, device, closed)


class WriteResult(NamedTuple):
    """Outcome of a write: `seq` is the frame's sequence number, -1 when it was not published.

    A NamedTuple because one is made per frame and it is cheaper to build than a dataclass."""

    status: WriteStatus
    seq: int = -1
    reason: str = ""

    @property
    def published(self) -> bool:
        return self.status in (WriteStatus.OK, WriteStatus.OVERWROTE_OLDEST)


@dataclass(frozen=True, slots=True)
class ChannelSpec:
    """What a channel was registered with; re-registering must ask for the same thing."""

    kind: Kind
    dtype: torch.dtype
    max_shape: tuple[int, ...]
    policy: Policy
    depth: int
    on_full: OnFull
    lease_slots: int

    @property
    def max_numel(self) -> int:
        return math.prod(self.max_shape)


class _Slot:
    """One preallocated frame buffer and the state the channel lock guards."""

    __slots__ = ("data", "data_u8", "host_u8", "host_np", "host_mv", "ready", "release_events",
                 "shape", "view", "seq", "meta", "ts_ns", "leases", "writing", "live", "adopted")

    def __init__(self, numel: int, dtype: torch.dtype, device: torch.device) -> None:
        self.ready: torch.cuda.Event | None = torch.cuda.Event() if device.type == "cuda" else None
        self.allocate(numel, dtype, device)
        self.release_events: list[Any] = []  # CUDA: recorded on each reader's stream at release
        self.shape: tuple[int, ...] = (0,)
        self.view = self.data[:0]  # the frame-shaped view leases hand out; rebuilt when the shape changes
        self.seq = -1
        self.meta: Mapping[str, Any] = {}
        self.ts_ns = 0
        self.leases = 0       # readers holding it
        self.writing = False  # reserved by a writer, not yet published
        self.live = False     # the current latest frame, or queued in a fifo
        self.adopted = False  # `view` is a caller's buffer (write_bytes(adopt=True)), not `data`

    def allocate(self, numel: int, dtype: torch.dtype, device: torch.device) -> None:
        """The slot's own buffer (and, on CUDA, its pinned staging buffer)."""
        with torch.inference_mode(False):  # inference tensors could not be written outside inference mode
            # zeros, not empty: touching every page now keeps page faults off the first frames' path
            self.data = torch.zeros(numel, dtype=dtype, device=device)
            self.data_u8 = self.data.view(torch.uint8)
            if device.type == "cuda":
                # Frames from the wire land in pinned host memory, then go up with an async copy.
                self.host_u8 = torch.zeros(self.data_u8.numel(), dtype=torch.uint8, pin_memory=True)
            else:
                self.host_u8 = self.data_u8
        self.host_np: np.ndarray = self.host_u8.numpy()
        self.host_mv = memoryview(self.host_np)

    def drop_storage(self) -> None:
        """An adopted frame is this (CPU) slot's storage now: give the preallocated buffer back, so the
        channel holds at most its slot count of frames, as the capacity budgets counted."""
        if self.data.numel():
            self.allocate(0, self.data.dtype, self.data.device)

    @property
    def free(self) -> bool:
        return not (self.writing or self.live or self.leases)


_EMPTY_META: Mapping[str, Any] = types.MappingProxyType({})


class Lease:
    """A reader's hold on one published frame. The slot is not rewritten until `release()`.

    `tensor` is a view of the slot shaped like the frame. Treat it as read-only (torch has no
    read-only tensors) and do not use it after release: copy what must outlive the lease. A lease
    garbage-collected without release is reclaimed at the channel's next operation and counted.
    """

    __slots__ = ("_channel", "_slot", "_tensor", "_stream", "_released", "seq", "meta", "ts_ns", "shape", "stable")

    def __init__(self, channel: Channel, slot: _Slot, stream: Any) -> None:
        self._released = False
        self._channel = channel
        self._slot = slot
        self._stream = stream
        self.seq: int = slot.seq
        self.meta: Mapping[str, Any] = slot.meta
        self.ts_ns: int = slot.ts_ns
        self.shape: tuple[int, ...] = slot.shape
        self._tensor = slot.view
        #: The view is an adopted buffer nobody writes again: it stays valid after release.
        self.stable: bool = slot.adopted

    @property
    def tensor(self) -> torch.Tensor:
        if self._released:
            raise RuntimeError(f"lease of seq {self.seq} on {self._channel.name!r} was already released")
        return self._tensor

    @property
    def released(self) -> bool:
        return self._released

    def release(self) -> None:
        """Give the slot back to the writer. Idempotent."""
        if not self._released:
            self._released = True
            channel = self._channel
            event = None if self._stream is None else self._release_event()
            with channel._lock:
                channel._drop_lease(self._slot, event)

    def _release_event(self) -> Any:
        event = torch.cuda.Event()
        event.record(self._stream)  # the writer's stream waits for this reader's queued work
        return event

    def __enter__(self) -> Lease:
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()

    def __del__(self) -> None:
        # No lock here: GC may run inside a critical section. The channel reclaims it later.
        if not self._released:
            self._released = True
            event = None if self._stream is None else self._release_event()
            self._channel._orphans.append((self._slot, event))

    def __repr__(self) -> str:
        return f"Lease({self._channel.name!r}, seq={self.seq}, shape={self.shape}, released={self._released})"


class Channel:
    """One named stream of frames: a ring of slots, a seq counter, counters, one lock.

    Policies: `latest` keeps only the newest frame readable (`read_latest`); `fifo` queues up to
    `depth` frames for `pop`/`pop_all`, each delivered to exactly one reader, in seq order.
    """

    def __init__(self, name: str, spec: ChannelSpec, device: torch.device) -> None:
        self.name = name
        self.spec = spec
        self.device = device
        self.itemsize = torch.empty((), dtype=spec.dtype).element_size()
        self._np_dtype = _numpy_dtype(spec.dtype)
        self._max_numel = spec.max_numel
        n_slots = spec.depth + (spec.lease_slots if spec.policy == "fifo" else 0)
        with torch.inference_mode(False):  # inference tensors could not be written outside inference mode
            self._slots = [_Slot(spec.max_numel, spec.dtype, device) for _ in range(n_slots)]
        self._lock = threading.Lock()
        self._fifo = spec.policy == "fifo"
        self._queue: collections.deque[_Slot] = collections.deque()  # fifo: published, unread, oldest first
        self._latest: _Slot | None = None
        self._orphans: collections.deque[tuple[_Slot, Any]] = collections.deque()
        self._cond = threading.Condition(self._lock)  # for readers that block in wait()
        self._waiting = 0
        self._side_stream = torch.cuda.Stream(device) if device.type == "cuda" else None
        if self._side_stream is not None:
            for slot in self._slots:
                slot.data.record_stream(self._side_stream)
        self._closed = False
        self._next_seq = 0
        self.writes = self.accepted = self.overwritten = self.dropped = self.rejected = 0
        self.reads = self.leases_outstanding = self.leases_unreleased = 0
        self.last_reason: dict[str, str] = {}

    # ---------------------------------------------------------------- writers

    def write_bytes(self, buf: Any, shape: tuple[int, ...] | list[int], meta: Mapping[str, Any] | None = None,
                    ts_ns: int = 0, *, dtype: torch.dtype | None = None, adopt: bool = False) -> WriteResult:
        """Copy a raw C-order buffer (bytes, memoryview, zmq frame buffer) in as a frame of `shape`.

        adopt: the buffer is the caller's to give away and nobody writes it again (a received zmq
        frame): on a CPU channel a large, aligned, writable one becomes the slot's storage instead of
        being copied (the slot keeps it alive until it is rewritten and the last lease is gone)."""
        shape = tuple(map(int, shape))
        if dtype is not None and dtype != self.spec.dtype:
            return self._reject("dtype", f"channel holds {self.spec.dtype}, got {dtype}")
        src = memoryview(buf)
        if src.format != "B" or src.ndim != 1:
            src = src.cast("B")  # raw bytes of any C-contiguous buffer
        nbytes = src.nbytes
        numel = math.prod(shape)
        if nbytes != numel * self.itemsize:
            return self._reject("size", f"{nbytes} bytes do not make shape {shape} of {self.spec.dtype}")
        reserved = self._reserve(numel, shape)
        if isinstance(reserved, WriteResult):
            return reserved
        slot, status = reserved
        if adopt and self._can_adopt(src):
            slot.view = torch.frombuffer(src, dtype=self.spec.dtype, count=numel).view(shape)
            slot.shape, slot.adopted = shape, True
            slot.drop_storage()
            return self._publish(slot, meta, ts_ns, status)
        self._shape(slot, shape, numel)
        try:
            if nbytes <= SMALL_COPY_BYTES:
                slot.host_mv[:nbytes] = src
            else:
                np.copyto(slot.host_np[:nbytes], np.frombuffer(src, dtype=np.uint8))
            self._upload(slot, nbytes)
        except BaseException:
            self._abort(slot)
            raise
        return self._publish(slot, meta, ts_ns, status)

    def write(self, value: torch.Tensor | np.ndarray, meta: Mapping[str, Any] | None = None,
              ts_ns: int = 0) -> WriteResult:
        """Copy a tensor or array in as a frame of its own shape (the dtype must be the channel's)."""
        if isinstance(value, np.ndarray):
            if value.dtype != self._np_dtype:
                return self._reject("dtype", f"channel holds {self.spec.dtype}, got numpy {value.dtype}")
        elif value.dtype != self.spec.dtype:
            return self._reject("dtype", f"channel holds {self.spec.dtype}, got {value.dtype}")
        elif value.device.type == "cuda" and value.device != self.device:
            return self._reject("device", f"channel is on {self.device}, tensor on {value.device}")
        else:
            value = value.detach()  # the slot must never join an autograd graph
        shape = tuple(value.shape)
        numel = math.prod(shape)
        reserved = self._reserve(numel, shape)
        if isinstance(reserved, WriteResult):
            return reserved
        slot, status = reserved
        self._shape(slot, shape, numel)
        try:
            if isinstance(value, torch.Tensor) and value.device.type == "cuda":
                self._copy_on_device(slot, value)
            else:
                nbytes = numel * self.itemsize
                if isinstance(value, np.ndarray):
                    np.copyto(slot.host_np[:nbytes].view(value.dtype).reshape(shape), value, casting="no")
                else:
                    target = slot.view if self._side_stream is None else slot.host_u8[:nbytes].view(
                        self.spec.dtype).view(shape)
                    target.copy_(value)
                self._upload(slot, nbytes)
        except BaseException:
            self._abort(slot)
            raise
        return self._publish(slot, meta, ts_ns, status)

    def _reserve(self, numel: int, shape: tuple[int, ...]) -> tuple[_Slot, WriteStatus] | WriteResult:
        """Under the lock: count the write and take a slot only this writer may touch."""
        if numel > self._max_numel:
            return self._reject("too_large", f"shape {shape} has {numel} elements, "
                                             f"channel max is {self._max_numel}")
        with self._lock:
            if self._orphans:
                self._reclaim_orphans()
            self.writes += 1
            if self._closed:
                self.rejected += 1
                self.last_reason["rejected"] = "channel closed"
                return WriteResult(WriteStatus.REJECTED, reason="closed")
            fifo = self._fifo
            queue_full = fifo and len(self._queue) >= self.spec.depth
            slot = None if queue_full else self._find_free()
            status = WriteStatus.OK
            if slot is None and fifo and self.spec.on_full == "overwrite_oldest" and self._queue:
                # Queued slots were never leased (popping is what leases). On CUDA its upload may still
                # be queued: no reader can see that frame, and the new upload queues behind it.
                slot = self._queue.popleft()
                slot.live = False
                status = WriteStatus.OVERWROTE_OLDEST
            if slot is None:
                reason = f"fifo full ({self.spec.depth} queued)" if queue_full else \
                    "no free slot: every slot is leased, being written or uploading"
                self.dropped += 1
                self.last_reason["dropped"] = reason
                return WriteResult(WriteStatus.DROPPED, reason=reason)
            slot.writing = True
            events = slot.release_events
            if events:
                slot.release_events = []
        if events:
            for event in events:  # the copy must not start before readers' queued work on this slot
                self._side_stream.wait_event(event)  # type: ignore[union-attr]
        return slot, status

    def _can_adopt(self, src: memoryview) -> bool:
        """Adopting beats copying for large frames; torch needs a writable buffer aligned to the dtype."""
        if self._side_stream is not None or src.readonly or src.nbytes <= SMALL_COPY_BYTES:
            return False
        return np.frombuffer(src, dtype=np.uint8, count=1).ctypes.data % self.itemsize == 0

    def _shape(self, slot: _Slot, shape: tuple[int, ...], numel: int) -> None:
        """Give a reserved slot (this writer's alone) the frame's shape and a view of that shape;
        a slot that gave its buffer up for adopted frames gets a new one (the budget still has room)."""
        if slot.data.numel() < numel:
            slot.allocate(self._max_numel, self.spec.dtype, self.device)
            slot.shape = ()
        if slot.shape != shape or slot.adopted:
            slot.view = slot.data[:numel].view(shape)
            slot.shape = shape
            slot.adopted = False

    def _find_free(self) -> _Slot | None:
        """The lowest free slot: reusing the same few slots keeps them warm in cache."""
        for slot in self._slots:
            # CUDA: a slot whose last upload is still queued keeps its pinned staging buffer busy
            # (a reader may be waiting on that upload): skip it rather than wait on the host.
            if not (slot.writing or slot.live or slot.leases) and (slot.ready is None or slot.ready.query()):
                return slot
        return None

    def _publish(self, slot: _Slot, meta: Mapping[str, Any] | None, ts_ns: int, status: WriteStatus) -> WriteResult:
        with self._lock:
            seq = self._next_seq
            self._next_seq += 1
            evicted = slot.seq  # OVERWROTE_OLDEST: the queued frame this one replaced
            slot.seq = seq
            slot.meta = _EMPTY_META if meta is None else meta
            slot.ts_ns = ts_ns
            slot.writing = False
            slot.live = True
            if self._fifo:
                self._queue.append(slot)
            else:
                if self._latest is not None:
                    self._latest.live = False
                self._latest = slot
            if status is WriteStatus.OK:
                self.accepted += 1
                reason = ""
            else:
                self.overwritten += 1
                reason = f"fifo full ({self.spec.depth} queued): evicted seq {evicted}"
                self.last_reason["overwritten"] = reason
            if self._waiting:
                self._cond.notify_all()
        return WriteResult(status, seq, reason)

    def _abort(self, slot: _Slot) -> None:
        with self._lock:
            slot.writing = False
            self.dropped += 1
            self.last_reason["dropped"] = "copy failed"

    def _reject(self, reason: str, message: str) -> WriteResult:
        with self._lock:
            self.writes += 1
            self.rejected += 1
            self.last_reason["rejected"] = message
        return WriteResult(WriteStatus.REJECTED, reason=reason)

    # ---------------------------------------------------------------- CUDA copies (no host sync per frame)

    def _upload(self, slot: _Slot, nbytes: int) -> None:
        if self._side_stream is None:
            return  # CPU: the staging buffer *is* the slot
        with torch.cuda.stream(self._side_stream):
            slot.data_u8[:nbytes].copy_(slot.host_u8[:nbytes], non_blocking=True)
            slot.ready.record(self._side_stream)

    def _copy_on_device(self, slot: _Slot, value: torch.Tensor) -> None:
        side = self._side_stream
        assert side is not None, "a CUDA tensor is only accepted by a CUDA channel"
        side.wait_stream(torch.cuda.current_stream(self.device))  # the producer's kernels made `value`
        with torch.cuda.stream(side):
            slot.view.copy_(value, non_blocking=True)
            slot.ready.record(side)
        value.record_stream(side)  # keep the source's memory until the side stream has read it

    # ---------------------------------------------------------------- readers

    def read_latest(self, after_seq: int = -1) -> Lease | None:
        """Lease the newest frame if its seq is greater than `after_seq` (the reader's cursor)."""
        if self.spec.policy != "latest":
            raise TypeError(f"channel {self.name!r} is fifo: use pop() or pop_all()")
        with self._lock:
            if self._orphans:
                self._reclaim_orphans()
            slot = self._latest
            if slot is None or slot.seq <= after_seq or self._closed:
                return None
            self._lease(slot)
        return self._make_lease(slot)

    def wait(self, after_seq: int = -1, timeout: float | None = None) -> bool:
        """Block until there is something to read (latest: a frame newer than `after_seq`; fifo: a
        queued frame) or the channel closes (check `closed`); False on timeout. Writers never block."""
        with self._cond:
            self._waiting += 1
            try:
                return self._cond.wait_for(lambda: self._ready_for(after_seq), timeout)
            finally:
                self._waiting -= 1

    def _ready_for(self, after_seq: int) -> bool:
        if self._closed:
            return True
        return bool(self._queue) if self._fifo else self._next_seq - 1 > after_seq

    def pop(self) -> Lease | None:
        """fifo: lease the oldest queued frame, removing it from the queue."""
        self._require_fifo()
        with self._lock:
            if self._orphans:
                self._reclaim_orphans()
            if not self._queue or self._closed:
                return None
            slot = self._queue.popleft()
            slot.live = False
            self._lease(slot)
        return self._make_lease(slot)

    def pop_all(self, max_n: int | None = None) -> list[Lease]:
        """fifo: lease up to `max_n` queued frames (all when None), oldest first."""
        self._require_fifo()
        with self._lock:
            if self._orphans:
                self._reclaim_orphans()
            if self._closed:
                return []
            n = len(self._queue) if max_n is None else min(max_n, len(self._queue))
            slots = [self._queue.popleft() for _ in range(n)]
            for slot in slots:
                slot.live = False
                self._lease(slot)
        return [self._make_lease(slot) for slot in slots]

    def _require_fifo(self) -> None:
        if self.spec.policy != "fifo":
            raise TypeError(f"channel {self.name!r} is latest: use read_latest()")

    def _lease(self, slot: _Slot) -> None:
        slot.leases += 1
        self.reads += 1
        self.leases_outstanding += 1

    def _make_lease(self, slot: _Slot) -> Lease:
        stream = None
        if slot.ready is not None:
            stream = torch.cuda.current_stream(self.device)
            stream.wait_event(slot.ready)        # GPU-side wait for the upload; the host goes on
            slot.data.record_stream(stream)      # the slot's memory is used on the reader's stream
        return Lease(self, slot, stream)

    def _drop_lease(self, slot: _Slot, event: Any) -> None:
        slot.leases -= 1
        self.leases_outstanding -= 1
        if event is not None:
            slot.release_events.append(event)

    def _reclaim_orphans(self) -> None:
        while self._orphans:
            slot, event = self._orphans.popleft()
            self._drop_lease(slot, event)
            self.leases_unreleased += 1

    # ---------------------------------------------------------------- introspection

    @property
    def last_seq(self) -> int:
        return self._next_seq - 1

    @property
    def closed(self) -> bool:
        return self._closed

    def slot_data_ptrs(self) -> list[int]:
        """Addresses of the preallocated slots (they never change: tests rely on it)."""
        return [slot.data.data_ptr() for slot in self._slots]

    def stats(self) -> dict[str, Any]:
        """Counters for `sagectl status`. writes == accepted + overwritten + dropped + rejected."""
        with self._lock:
            if self._orphans:
                self._reclaim_orphans()
            spec = self.spec
            return {
                "kind": spec.kind, "policy": spec.policy, "dtype": str(spec.dtype).removeprefix("torch."),
                "max_shape": list(spec.max_shape), "depth": spec.depth, "slots": len(self._slots),
                "device": str(self.device),
                "writes": self.writes, "accepted": self.accepted, "overwritten": self.overwritten,
                "dropped": self.dropped, "rejected": self.rejected, "reads": self.reads,
                "last_seq": self._next_seq - 1,
                "queued": len(self._queue) if spec.policy == "fifo" else int(self._latest is not None),
                "leases_outstanding": self.leases_outstanding, "leases_unreleased": self.leases_unreleased,
                "free_slots": sum(slot.free for slot in self._slots),
                "last_reason": dict(self.last_reason),
            }

    def close(self) -> None:
        """Stop taking writes and handing out leases; slot memory goes when the last view does."""
        with self._lock:
            self._closed = True
            self._queue.clear()
            self._latest = None
            self._cond.notify_all()

    def __repr__(self) -> str:
        s = self.spec
        return f"Channel({self.name!r}, {s.kind}/{s.policy}, {s.dtype}, max_shape={s.max_shape}, depth={s.depth})"


class Mailbox:
    """The runtime's named channels on one device. Thread-safe; `close()` releases everything."""

    def __init__(self, device: torch.device | str = "cpu") -> None:
        self.device = torch.device(device)
        if self.device.type == "cuda" and self.device.index is None:
            self.device = torch.device("cuda", torch.cuda.current_device())
        elif self.device.type not in ("cpu", "cuda"):
            raise ValueError(f"mailbox device must be cpu or cuda, got {self.device}")
        self._channels: dict[str, Channel] = {}
        self._lock = threading.Lock()

    def register(self, name: str, *, kind: Kind = "focus", dtype: torch.dtype, max_shape: tuple[int, ...],
                 policy: Policy = "latest", depth: int | None = None, on_full: OnFull = "overwrite_oldest",
                 lease_slots: int | None = None) -> Channel:
        """Create a channel, its slots allocated now, or return the existing one with the same spec.

        depth: latest, the number of slots (>= 2; a writer never blocks while at most depth-2 slots
        are leased); fifo, the most frames queued. lease_slots (fifo): extra slots for popped frames
        still leased, so holding a batch does not shrink the queue (default depth). on_full (fifo):
        evict the oldest queued frame (OVERWROTE_OLDEST) or refuse the new one (DROPPED).
        """
        if kind != "focus":
            raise ValueError(f"channel {name!r}: kind must be 'focus', got {kind!r}")
        if policy not in ("latest", "fifo"):
            raise ValueError(f"channel {name!r}: policy must be 'latest' or 'fifo', got {policy!r}")
        if on_full not in ("overwrite_oldest", "drop_newest"):
            raise ValueError(f"channel {name!r}: on_full must be 'overwrite_oldest' or 'drop_newest'")
        max_shape = tuple(int(d) for d in max_shape)
        if any(d < 0 for d in max_shape):
            raise ValueError(f"channel {name!r}: negative dimension in max_shape {max_shape}")
        depth = DEFAULT_DEPTH[policy] if depth is None else int(depth)
        if depth < (2 if policy == "latest" else 1):
            raise ValueError(f"channel {name!r}: depth {depth} too small for policy {policy!r}")
        lease_slots = (depth if policy == "fifo" else 0) if lease_slots is None else int(lease_slots)
        if lease_slots < 0:
            raise ValueError(f"channel {name!r}: lease_slots must be >= 0")
        spec = ChannelSpec(kind, dtype, max_shape, policy, depth, on_full, lease_slots)
        with self._lock:
            existing = self._channels.get(name)
            if existing is not None:
                if existing.spec != spec:
                    raise ValueError(f"channel {name!r} exists with {existing.spec}, asked for {spec}")
                return existing
            channel = Channel(name, spec, self.device)
            self._channels[name] = channel
            return channel

    def get(self, name: str) -> Channel:
        """The channel called `name`; KeyError if it was never registered."""
        return self._channels[name]

    def __contains__(self, name: object) -> bool:
        return name in self._channels

    def names(self) -> list[str]:
        with self._lock:
            return sorted(self._channels)

    def stats(self) -> dict[str, dict[str, Any]]:
        """Every channel's counters, by name (registration may go on in another thread)."""
        with self._lock:
            channels = sorted(self._channels.items())
        return {name: channel.stats() for name, channel in channels}

    def close(self) -> None:
        """Close every channel and forget them; leases still held keep their memory alive."""
        with self._lock:
            channels, self._channels = list(self._channels.values()), {}
        for channel in channels:
            channel.close()

    def __enter__(self) -> Mailbox:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _numpy_dtype(dtype: torch.dtype) -> np.dtype | None:
    try:
        return np.dtype(torch.empty((), dtype=dtype).numpy().dtype)
    except TypeError:  # bfloat16 and friends have no numpy dtype
        return None
