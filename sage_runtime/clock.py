"""The clocks the tick, cognition and plugin hosts read: the machine's, or a virtual one.

A live daemon runs on `SYSTEM` (monotonic time for deadlines, the epoch for stamps). A
deterministic replay (`sage-runtime --replay IN.mcap --deterministic`, sage_runtime/replay.py)
runs on `VirtualClock`s set from the recording's timestamps, so deadlines, frame ages and ATP
recharge come out the same on every run, whatever the machine's load.
"""

from __future__ import annotations

import time
from typing import Protocol


class Clock(Protocol):
    def monotonic(self) -> float:
        """Seconds, for intervals (breakers, ATP recharge, waiting times)."""

    def monotonic_ns(self) -> int:
        """Nanoseconds, for deadlines and latencies."""

    def time_ns(self) -> int:
        """Nanoseconds since the epoch, for stamps and frame ages (frames carry epoch `ts_ns`)."""


class SystemClock:
    """The machine's clocks (what every module read directly before clocks were injected)."""

    monotonic = staticmethod(time.monotonic)
    monotonic_ns = staticmethod(time.perf_counter_ns)
    time_ns = staticmethod(time.time_ns)


SYSTEM: Clock = SystemClock()


class VirtualClock:
    """Time that moves only when told: `set` (never backwards) and `advance`. One value serves as
    both monotonic and epoch time: a replay's clock reads the recording's epoch receive times."""

    def __init__(self, now_ns: int = 0) -> None:
        self.now_ns = int(now_ns)

    def set(self, now_ns: int) -> None:
        self.now_ns = max(self.now_ns, int(now_ns))

    def advance(self, ns: int) -> None:
        self.now_ns += max(int(ns), 0)

    def monotonic(self) -> float:
        return self.now_ns / 1e9

    def monotonic_ns(self) -> int:
        return self.now_ns

    def time_ns(self) -> int:
        return self.now_ns
