"""Latency histograms and counters cheap enough to leave on in the tick path."""

from __future__ import annotations

import numpy as np


class LatencyWindow:
    """The last `size` samples (ms) in a preallocated ring; percentiles computed on demand."""

    __slots__ = ("_buf", "_n", "count", "max_ms")

    def __init__(self, size: int = 4096) -> None:
        self._buf = np.zeros(size, dtype=np.float64)
        self._n = 0
        self.count = 0
        self.max_ms = 0.0

    def record(self, ms: float) -> None:
        self._buf[self._n] = ms
        self._n = (self._n + 1) % self._buf.size
        self.count += 1
        if ms > self.max_ms:
            self.max_ms = ms

    def values(self) -> np.ndarray:
        return self._buf[: min(self.count, self._buf.size)]

    def since(self, count: int) -> np.ndarray:
        """A copy of the samples recorded after the first `count` (at most the ring's size, newest
        last): a scraper folds them into cumulative histograms without touching `record`."""
        new = min(self.count - count, self._buf.size, self.count)
        if new <= 0:
            return self._buf[:0].copy()
        idx = (np.arange(self._n - new, self._n)) % self._buf.size
        return self._buf[idx]

    def percentile(self, q: float) -> float | None:
        vals = self.values()
        return float(np.percentile(vals, q)) if vals.size else None

    def summary(self) -> dict[str, float | int | None]:
        vals = self.values()
        if not vals.size:
            return {"count": 0, "p50_ms": None, "p99_ms": None, "max_ms": None}
        p50, p99 = np.percentile(vals, [50, 99])
        return {"count": self.count, "p50_ms": round(float(p50), 4), "p99_ms": round(float(p99), 4),
                "max_ms": round(self.max_ms, 4)}


class Stages:
    """One LatencyWindow per named stage of the tick (ingest, salience, allocation, plugin:*, publish)."""

    def __init__(self, size: int = 4096) -> None:
        self._size = size
        self.windows: dict[str, LatencyWindow] = {}

    def record(self, stage: str, ms: float) -> None:
        window = self.windows.get(stage)
        if window is None:
            window = self.windows[stage] = LatencyWindow(self._size)
        window.record(ms)

    def summary(self) -> dict[str, dict[str, float | int | None]]:
        return {name: w.summary() for name, w in sorted(self.windows.items())}
