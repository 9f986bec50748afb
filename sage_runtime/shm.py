"""Shared-memory frame rings (docs/protocol.md, "Shared-memory ingest"): the layout both sides
share, the client's writer and the daemon's reader. No torch: the client SDK imports this.

A ring is one POSIX shared-memory object (Linux: /dev/shm/<name>) that its client creates, owns
and unlinks. Little-endian, every field naturally aligned:

    0    8s  magic  b"SAGESHM1"
    8    u32 version (1)        12  u32 slots
    16   u64 slot_bytes         24  u64 data_offset (a multiple of 4096)
    32   u32 owner_pid          36  u32 reserved (0)
    40   u64 owner_start        (the owner's start time, /proc/<pid>/stat field 22; 0 if unknown)
    48   16 bytes reserved
    64 + 64*i: slot i header:   u64 gen (seqlock: odd while the writer is in the slot), u64 nbytes
    data_offset + i*slot_bytes: slot i's bytes

Writer: gen += 1 (odd), write the bytes and nbytes, gen += 1 (even), then send the ZeroMQ header
naming (name, slot, gen). Reader (the daemon): read gen; if it is not the message's gen the frame is
gone (rejected `shm_torn`); copy; read gen again; changed means the writer came back during the copy
(rejected `shm_torn`, nothing published). So the daemon never uses bytes of a slot being written.
"""

from __future__ import annotations

import mmap
import os
import re
import struct
from dataclasses import dataclass

import numpy as np

MAGIC = b"SAGESHM1"
VERSION = 1
HEADER = struct.Struct("<8sIIQQIIQ")  # magic, version, slots, slot_bytes, data_offset, pid, 0, start
SLOT_HEADER_BYTES = 64
PAGE = 4096
#: Ring names: a prefix the daemon's sweep recognises, and nothing a path could escape with.
NAME_RE = re.compile(r"sage-[A-Za-z0-9_.-]{1,200}\Z")
SHM_DIR = "/dev/shm"
MAX_SLOTS = 64


class ShmError(ValueError):
    """A ring that cannot be used: `reason` is the ingest rejection code (shm or shm_torn)."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason


def data_offset(slots: int) -> int:
    return -(-(SLOT_HEADER_BYTES * (slots + 1)) // PAGE) * PAGE


def process_start(pid: int) -> int:
    """A process's start time in clock ticks since boot (0 when unreadable): tells a live owner from
    a new process that got its pid."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            return int(f.read().rsplit(b")", 1)[1].split()[19])
    except (OSError, IndexError, ValueError):
        return 0


def owner_alive(pid: int, start: int) -> bool:
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass  # someone else's live process
    return start == 0 or process_start(pid) in (0, start)


@dataclass(frozen=True)
class Layout:
    slots: int
    slot_bytes: int
    data_offset: int
    owner_pid: int
    owner_start: int

    @property
    def size(self) -> int:
        return self.data_offset + self.slots * self.slot_bytes

    @classmethod
    def parse(cls, buf: bytes | memoryview) -> Layout:
        if len(buf) < HEADER.size:
            raise ShmError("shm", "ring is smaller than its header")
        magic, version, slots, slot_bytes, offset, pid, _, start = HEADER.unpack_from(buf)
        if magic != MAGIC or version != VERSION:
            raise ShmError("shm", "not a sage shared-memory ring (magic/version)")
        if not 1 <= slots <= MAX_SLOTS or slot_bytes <= 0 or offset != data_offset(slots):
            raise ShmError("shm", f"ring header is inconsistent (slots {slots}, slot_bytes {slot_bytes})")
        return cls(slots, slot_bytes, offset, pid, start)


class ShmWriter:
    """The client's ring: created here (O_EXCL, mode 0600), unlinked by `close()`."""

    def __init__(self, name: str, slot_bytes: int, slots: int = 4, mode: int = 0o600) -> None:
        if not NAME_RE.match(name):
            raise ValueError(f"ring name {name!r} must match {NAME_RE.pattern}")
        if not 2 <= slots <= MAX_SLOTS or slot_bytes <= 0:
            raise ValueError(f"need 2..{MAX_SLOTS} slots and slot_bytes > 0")
        self.name, self.slots, self.slot_bytes = name, slots, -(-slot_bytes // 64) * 64
        self.layout = Layout(slots, self.slot_bytes, data_offset(slots), os.getpid(), process_start(os.getpid()))
        self.path = os.path.join(SHM_DIR, name)
        fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_RDWR, mode)
        try:
            os.ftruncate(fd, self.layout.size)
            self.mm = mmap.mmap(fd, self.layout.size)
        finally:
            os.close(fd)
        HEADER.pack_into(self.mm, 0, MAGIC, VERSION, slots, self.slot_bytes, self.layout.data_offset,
                         self.layout.owner_pid, 0, self.layout.owner_start)
        heads = np.frombuffer(self.mm, dtype="<u8", count=8 * slots, offset=SLOT_HEADER_BYTES)
        self._gens, self._sizes = heads[0::8], heads[1::8]  # one 64-byte header per slot
        self._data = np.frombuffer(self.mm, dtype=np.uint8, count=slots * self.slot_bytes,
                                   offset=self.layout.data_offset).reshape(slots, self.slot_bytes)
        self._next = 0

    def write(self, array: np.ndarray) -> tuple[int, int]:
        """Copy a C-contiguous array into the next slot; (slot, gen) to name in the message."""
        raw = np.ascontiguousarray(array).reshape(-1).view(np.uint8)
        if raw.size > self.slot_bytes:
            raise ValueError(f"frame of {raw.size} bytes exceeds the ring's slot_bytes {self.slot_bytes}")
        slot = self._next
        self._next = (slot + 1) % self.slots
        gen = int(self._gens[slot])
        self._gens[slot] = gen + 1  # odd: in the slot
        self._data[slot, :raw.size] = raw
        self._sizes[slot] = raw.size
        self._gens[slot] = gen + 2  # even: readable
        return slot, gen + 2

    def close(self) -> None:
        """Unlink the ring (a reader's mapping stays valid until it unmaps)."""
        if self.mm is None:
            return
        self._gens = self._sizes = self._data = None  # type: ignore[assignment]
        try:
            self.mm.close()
        except BufferError:
            pass  # a caller still holds a view; the unlink below still removes the name
        self.mm = None  # type: ignore[assignment]
        try:
            os.unlink(self.path)
        except FileNotFoundError:
            pass


class ShmReader:
    """The daemon's read-only mapping of one client's ring."""

    def __init__(self, name: str) -> None:
        if not NAME_RE.match(name):
            raise ShmError("shm", f"ring name {name[:80]!r} does not match {NAME_RE.pattern}")
        self.name = name
        try:
            self.fd = os.open(os.path.join(SHM_DIR, name), os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
        except OSError as exc:
            raise ShmError("shm", f"ring {name!r} cannot be opened: {exc.strerror}") from None
        try:
            head = os.pread(self.fd, HEADER.size, 0)
            self.layout = Layout.parse(head)
            if os.fstat(self.fd).st_size < self.layout.size:
                raise ShmError("shm", f"ring {name!r} is smaller than its header says")
            self.mm = mmap.mmap(self.fd, self.layout.size, prot=mmap.PROT_READ)
        except BaseException:
            os.close(self.fd)
            raise
        slots = self.layout.slots
        self._heads = np.frombuffer(self.mm, dtype="<u8", count=8 * slots, offset=SLOT_HEADER_BYTES)

    def gen(self, slot: int) -> int:
        return int(self._heads[8 * slot])

    def view(self, slot: int, gen: int, nbytes: int) -> memoryview:
        """The slot's bytes if it still holds frame `gen` of `nbytes` bytes; raises ShmError."""
        lay = self.layout
        if not 0 <= slot < lay.slots:
            raise ShmError("shm", f"slot {slot} is not in ring {self.name!r} ({lay.slots} slots)")
        if nbytes > lay.slot_bytes:
            raise ShmError("shm", f"frame of {nbytes} bytes exceeds the ring's slot_bytes {lay.slot_bytes}")
        if os.fstat(self.fd).st_size < lay.size:  # shrunk under us: reading would SIGBUS
            raise ShmError("shm", f"ring {self.name!r} was truncated")
        if self.gen(slot) != gen or int(self._heads[8 * slot + 1]) != nbytes:
            raise ShmError("shm_torn", f"slot {slot} of {self.name!r} no longer holds frame gen {gen}")
        start = lay.data_offset + slot * lay.slot_bytes
        return memoryview(self.mm)[start:start + nbytes]

    def alive(self) -> bool:
        """The owner still runs and the ring still has its name."""
        try:
            linked = os.fstat(self.fd).st_nlink > 0
        except OSError:
            return False
        return linked and owner_alive(self.layout.owner_pid, self.layout.owner_start)

    def unlink_if_dead(self) -> bool:
        """Unlink the ring if its owner is gone and the name still points at this ring (same
        inode, this user's file): a client killed with -9 leaves it behind."""
        path = os.path.join(SHM_DIR, self.name)
        try:
            st, mine = os.stat(path), os.fstat(self.fd)
            if (st.st_dev, st.st_ino) != (mine.st_dev, mine.st_ino) or st.st_uid != os.getuid() \
                    or owner_alive(self.layout.owner_pid, self.layout.owner_start):
                return False
            os.unlink(path)
            return True
        except OSError:
            return False

    def close(self) -> bool:
        """Unmap and close; False while a view of the mapping is still out (try again later)."""
        self._heads = None  # type: ignore[assignment]
        try:
            self.mm.close()
        except BufferError:
            return False
        os.close(self.fd)
        return True


def sweep_dead(directory: str = SHM_DIR) -> list[str]:
    """Unlink rings in `directory` whose owner process is gone (clients killed with no daemon
    watching). Only files this user may unlink and that parse as rings are touched."""
    gone = []
    try:
        names = [n for n in os.listdir(directory) if NAME_RE.match(n)]
    except OSError:
        return gone
    for name in names:
        path = os.path.join(directory, name)
        try:
            with open(path, "rb") as f:
                lay = Layout.parse(f.read(HEADER.size))
            if os.stat(path).st_uid == os.getuid() and not owner_alive(lay.owner_pid, lay.owner_start):
                os.unlink(path)
                gone.append(name)
        except (OSError, ShmError):
            continue
    return gone
