"""A minimal progress bar: redraws one line on a terminal, prints one line per update in a log."""

from __future__ import annotations

import sys
import time
from typing import TextIO


class Progress:
    def __init__(self, total: int, desc: str = "", stream: TextIO | None = None, min_interval_s: float = 0.5) -> None:
        self.total, self.desc = total, desc
        self.stream = stream or sys.stderr
        self.tty = self.stream.isatty()
        self.min_interval = min_interval_s if self.tty else 30.0
        self.start = self._last = time.monotonic()
        self.n = 0

    def update(self, n: int = 1, **postfix: float | str) -> None:
        self.n += n
        now = time.monotonic()
        if now - self._last < self.min_interval and self.n < self.total:
            return
        self._last = now
        frac = min(1.0, self.n / max(self.total, 1))
        elapsed = now - self.start
        eta = elapsed / frac - elapsed if frac > 0 else 0.0
        bar = "#" * int(frac * 30)
        extras = " ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in postfix.items())
        line = f"{self.desc} [{bar:<30}] {self.n}/{self.total} {elapsed:.0f}s<{eta:.0f}s {extras}"
        self.stream.write(("\r" + line) if self.tty else line + "\n")
        self.stream.flush()

    def write(self, msg: str) -> None:
        self.stream.write(("\n" if self.tty else "") + msg + "\n")
        self.stream.flush()

    def close(self) -> None:
        if self.tty:
            self.stream.write("\n")
            self.stream.flush()
