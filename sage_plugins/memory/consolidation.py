"""Offline upkeep of the pattern index (DREAM / REST): decay salience, merge near-duplicates,
prune to capacity. Works on the in-memory index and queues the matching writes, so the database
follows the index in the same order; the caller bounds it by a time budget.
"""

from __future__ import annotations

import time
from collections import deque
from dataclasses import dataclass, field

import numpy as np
import torch

from sage_plugins.memory.index import PatternIndex
from sage_plugins.memory.store import SqliteStore


@dataclass
class Consolidator:
    """Holds what consolidation still has to look at: `fresh` are ids never checked for duplicates."""

    index: PatternIndex
    store: SqliteStore
    merge_threshold: float
    half_life_s: float
    keep: int
    same_source: bool
    fresh: deque[int] = field(default_factory=deque)
    row_ms: float = 0.05  # running cost of checking one fresh item, sizes the chunks
    last_decay: float = field(default_factory=time.monotonic)

    def pending(self) -> int:
        return len(self.fresh) + max(0, self.index.n - self.keep)

    def decay(self, now: float) -> float:
        """Scale every salience by 0.5 ** (elapsed / half-life); returns the factor applied."""
        factor = 0.5 ** ((now - self.last_decay) / self.half_life_s)
        if factor > 1 - 1e-6:
            return 1.0  # too little time passed; keep accumulating it
        self.index.salience[: self.index.n] *= factor
        self.store.scale_salience(factor)
        self.last_decay = now
        return factor

    def merge(self, deadline: float) -> tuple[int, int]:
        """Check fresh items against all others until done or past `deadline` (perf_counter s).
        Returns (checked, merged)."""
        checked = merged = 0
        idx = self.index
        while self.fresh and time.perf_counter() < deadline:
            left_ms = (deadline - time.perf_counter()) * 1e3
            size = int(min(64, max(1, left_ms / self.row_ms)))
            chunk = [i for i in (self.fresh.popleft() for _ in range(min(size, len(self.fresh))))
                     if i in idx.row_of]
            if not chunk:
                continue
            t0 = time.perf_counter()
            rows = np.array([idx.row_of[i] for i in chunk])
            ids_then = idx.ids[: idx.n].copy()
            sims = (idx.matrix[:, torch.from_numpy(rows)].T @ idx.live).cpu().numpy()
            sims[np.arange(len(rows)), rows] = -np.inf
            if self.same_source:
                codes = idx.source_code[: idx.n]
                sims[codes[None, :] != codes[rows][:, None]] = -np.inf
            cols = np.argmax(sims, axis=1)
            close = sims[np.arange(len(rows)), cols] > self.merge_threshold  # False when all masked
            best = np.where(close, ids_then[cols], -1)
            done = []
            for item, other in zip(chunk, best.tolist()):
                if item not in idx.row_of:
                    continue  # merged into an earlier item of this chunk
                if other != item and other in idx.row_of and self._cosine(item, other) > self.merge_threshold:
                    keep, drop = min(item, other), max(item, other)
                    self._merge_pair(keep, drop)
                    merged += 1
                    item = keep
                done.append(item)
            self.store.mark_consolidated(done)
            checked += len(chunk)
            self.row_ms = 0.8 * self.row_ms + 0.2 * (time.perf_counter() - t0) * 1e3 / len(chunk)
        return checked, merged

    def prune(self) -> int:
        """Drop the least salient items until at most `keep` remain."""
        drop = self.index.lowest_salience(self.index.n - self.keep)
        for item in drop:
            self.index.remove(item)
        if drop:
            self.store.delete(drop)
        return len(drop)

    def _cosine(self, a: int, b: int) -> float:
        return float(torch.dot(self.index.vector(self.index.row_of[a]), self.index.vector(self.index.row_of[b])))

    def _merge_pair(self, keep: int, drop: int) -> None:
        """The older item absorbs the newer: count-weighted mean direction, the larger salience."""
        idx = self.index
        rk, rd = idx.row_of[keep], idx.row_of[drop]
        ck, cd = int(idx.count[rk]), int(idx.count[rd])
        vec = ck * idx.vector(rk) + cd * idx.vector(rd)
        vec = vec / vec.norm().clamp_min(1e-12)
        salience = float(max(idx.salience[rk], idx.salience[rd]))
        idx.vector(rk).copy_(vec)
        idx.salience[rk] = salience
        idx.count[rk] = ck + cd
        idx.remove(drop)
        self.store.delete([drop])
        self.store.update(keep, vec.cpu().numpy(), salience, ck + cd)
