"""Shared-memory ingest for on-box clients: a frame's bytes come from the client's ring
(sage_runtime/shm.py, docs/protocol.md), its header over the ZeroMQ ingest socket.

The message is decoded and admitted by the same code as any other (wire.decode_ingest,
SensorTable.admit): the same validation, counters, rejection reasons and limits. This edge only
resolves the header's `shm` reference: it copies the slot's bytes out (the frame's one copy, which
the mailbox then adopts), checks the slot's seqlock after the copy and the floats on the copy. Rings
are mapped read-only, at most `limit` at a time, and unmapped once their owner process is gone or
has unlinked them; rings of clients that died while no daemon watched are unlinked at start.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import replace
from typing import Any

import numpy as np

from sage_runtime.shm import SHM_DIR, ShmError, ShmReader, sweep_dead
from sage_runtime.wire import FLOAT_DTYPES, NUMPY_VIEW, IngestMessage, WireError

log = logging.getLogger("sage.ingest.shm")

#: How often mapped rings are checked for a dead or departed owner.
SWEEP_S = 1.0


class ShmIngest:
    """The daemon's mapped rings by name, and what resolving a reference needs."""

    def __init__(self, limit: int, reject_non_finite: bool, directory: str | None = None) -> None:
        self.limit = limit
        self.reject_non_finite = reject_non_finite
        self.readers: dict[str, ShmReader] = {}
        self._closing: list[ShmReader] = []
        self.opened = self.closed = self.torn = 0
        self.directory = directory or SHM_DIR
        self.swept_at_start = sweep_dead(self.directory)
        if self.swept_at_start:
            log.info("unlinked %d shared-memory ring(s) of clients that are gone: %s", len(self.swept_at_start),
                     ", ".join(self.swept_at_start))

    def _reader(self, name: str) -> ShmReader:
        reader = self.readers.get(name)
        if reader is None:
            if len(self.readers) >= self.limit:
                self.sweep()
                if len(self.readers) >= self.limit:
                    raise ShmError("shm", f"{self.limit} shared-memory rings are mapped (capacity.max_sensors)")
            reader = self.readers[name] = ShmReader(name)
            self.opened += 1
            log.info("mapped shared-memory ring %s: %d slots of %d bytes, owner pid %d", name,
                     reader.layout.slots, reader.layout.slot_bytes, reader.layout.owner_pid)
        return reader

    def resolve(self, msg: IngestMessage) -> IngestMessage:
        """The message with its own copy of the slot's bytes as payload (the mailbox adopts that
        buffer as the slot's storage: the only copy). Raises WireError (shm, shm_torn, non_finite)
        like the decoder; the seqlock is checked after the copy, the floats on the copy."""
        ref = msg.shm
        assert ref is not None
        try:
            reader = self._reader(ref.name)
            view = reader.view(ref.slot, ref.gen, ref.nbytes)
        except ShmError as exc:
            self.torn += exc.reason == "shm_torn"
            raise WireError(exc.reason, str(exc)) from None
        buf = self._copy_out(view)
        del view
        if reader.gen(ref.slot) != ref.gen:
            self.torn += 1
            raise WireError("shm_torn", f"slot {ref.slot} of {ref.name!r} was rewritten while it was read")
        if self.reject_non_finite and msg.dtype in FLOAT_DTYPES and ref.nbytes:
            values = buf.view(NUMPY_VIEW[msg.dtype])
            finite = ((values & 0x7F80) != 0x7F80).all() if msg.dtype == "bfloat16" else np.isfinite(values).all()
            if not finite:
                raise WireError("non_finite", "float tensor contains NaN or Inf")
        return replace(msg, payload=memoryview(buf))

    @staticmethod
    def _copy_out(view: memoryview) -> np.ndarray:
        buf = np.empty(view.nbytes, dtype=np.uint8)
        np.copyto(buf, np.frombuffer(view, dtype=np.uint8))
        return buf

    def sweep(self) -> None:
        """Unmap rings whose owner died or unlinked them; unlink those of a client killed with -9
        (as this daemon's user may)."""
        for name, reader in list(self.readers.items()):
            if reader.alive():
                continue
            del self.readers[name]
            unlinked = reader.unlink_if_dead()
            self._closing.append(reader)
            self.closed += 1
            log.info("unmapped shared-memory ring %s (owner pid %d %s)", name, reader.layout.owner_pid,
                     "gone: ring unlinked" if unlinked else "unlinked it or is gone")
        self._closing = [r for r in self._closing if not r.close()]

    async def run(self) -> None:
        n = 0
        while True:
            await asyncio.sleep(SWEEP_S)
            self.sweep()
            n += 1
            if n % 10 == 0:  # rings of clients that died before this daemon mapped them
                sweep_dead(self.directory)

    def stats(self) -> dict[str, Any]:
        return {"rings": {n: {"slots": r.layout.slots, "slot_bytes": r.layout.slot_bytes,
                              "owner_pid": r.layout.owner_pid} for n, r in self.readers.items()},
                "opened": self.opened, "closed": self.closed, "torn": self.torn}

    def close(self) -> None:
        for reader in [*self.readers.values(), *self._closing]:
            reader.close()
        self.readers.clear()
        self._closing.clear()
