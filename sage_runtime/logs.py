"""Logging for the daemon: one line per event, journald priorities under systemd, rate-limited
ingest rejections.

Why: `journalctl -p err` filters on the `<N>` syslog prefix that journald parses from a service's
stderr, and a multi-line traceback becomes many unrelated journal entries. A client sending the
same bad frame at 1 kHz must not flood the journal either, yet the first one has to be visible.
"""

from __future__ import annotations

import logging
import os
import sys
import threading
import time
from collections.abc import Callable

#: syslog(3) priorities by logging level (journald reads `<N>` at the start of a line).
SYSLOG_PRIORITY = {logging.DEBUG: 7, logging.INFO: 6, logging.WARNING: 4, logging.ERROR: 3, logging.CRITICAL: 2}
#: After the first rejection per (sensor, reason), the rest are summed and logged this often.
REJECTION_INTERVAL_S = 60.0


def under_journald(stream: object = None, environ: dict[str, str] | None = None) -> bool:
    """True when `stream` (stderr by default) is the journal stream systemd gave this service:
    JOURNAL_STREAM holds its `device:inode`, so a redirected stderr is not mistaken for it."""
    value = (os.environ if environ is None else environ).get("JOURNAL_STREAM", "")
    if not value:
        return False
    try:
        dev, ino = (int(x) for x in value.split(":"))
        st = os.fstat((stream or sys.stderr).fileno())  # type: ignore[attr-defined]
    except (ValueError, OSError, AttributeError):
        return False
    return (st.st_dev, st.st_ino) == (dev, ino)


def _fold(text: str) -> str:
    return text.replace("\r", "").replace("\n", " | ")


class LogfmtFormatter(logging.Formatter):
    """One line per event: `ts level logger: message`; a traceback (or a multi-line message) is folded
    into the same line with ` | `. With `journald`, the line starts with `<N>` and drops the
    timestamp (the journal has its own)."""

    def __init__(self, journald: bool = False) -> None:
        super().__init__()
        self.journald = journald

    def format(self, record: logging.LogRecord) -> str:
        line = f"{record.levelname.lower()} {record.name}: {record.getMessage()}"
        if record.exc_info:
            line += " | " + self.formatException(record.exc_info)
        if record.stack_info:
            line += " | " + record.stack_info
        line = _fold(line)
        if self.journald:
            return f"<{SYSLOG_PRIORITY.get(record.levelno, 6)}>{line}"
        return f"{self.formatTime(record, '%Y-%m-%dT%H:%M:%S')} {line}"


def setup_logging(level: str) -> None:
    """Root logger to stderr, in journald form when stderr is the service's journal stream."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(LogfmtFormatter(journald=under_journald()))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    # A crash outside any `log.exception` (the main thread, or a thread's run) is one folded line too.
    crash = logging.getLogger("sage.crash")
    sys.excepthook = lambda t, v, tb: crash.critical("uncaught %s", t.__name__, exc_info=(t, v, tb))
    threading.excepthook = lambda a: crash.critical("uncaught %s in thread %s", a.exc_type.__name__,
                                                    a.thread.name if a.thread else "?",
                                                    exc_info=(a.exc_type, a.exc_value, a.exc_traceback))


def feed_hint(ingest_endpoints: list[str]) -> str:
    """The first thing a new user needs from a daemon that waits for input: how to give it some."""
    return ("waiting for sensor frames on " + ", ".join(ingest_endpoints)
            + "; feed it with `make demo` (synthetic camera/IMU/speech/puzzles), the Python SDK"
            " (sage_runtime.client.SensorPublisher, README 'Sending data'), or any ZeroMQ client"
            " speaking docs/protocol.md")


class RejectionLog:
    """Logs the first rejection per (sensor, reason) at once, then one count per interval.

    Counts are flushed when an interval ends: by the ingest's timer (`due_in` says when), or by the
    next rejection after it, so a burst that stops is summarised within an interval; the exact
    totals are always in `sagectl status` (ingest.rejected)."""

    def __init__(self, logger: logging.Logger, interval_s: float = REJECTION_INTERVAL_S,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.log = logger
        self.interval_s = interval_s
        self.clock = clock
        self._windows: dict[tuple[str, str], list[float | int]] = {}  # key -> [window start, count]

    def note(self, sensor: str | None, reason: str, message: str) -> None:
        now = self.clock()
        self.flush(now)
        key = (sensor or "?", reason)
        window = self._windows.get(key)
        if window is None:
            self._windows[key] = [now, 0]
            self.log.warning("rejected a frame from sensor %s (%s): %s; further %s rejections of this"
                             " sensor are counted and logged once per %.0f s", key[0], reason, message,
                             reason, self.interval_s)
        else:
            window[1] += 1

    def due_in(self, now: float | None = None) -> float:
        """Seconds until the first open window ends (a flush then logs or forgets it); the
        interval when none is open."""
        now = self.clock() if now is None else now
        ends = [float(w[0]) + self.interval_s - now for w in self._windows.values()]
        return max(min(ends, default=self.interval_s), 0.0)

    def flush(self, now: float | None = None) -> None:
        now = self.clock() if now is None else now
        for (sensor, reason), window in list(self._windows.items()):
            if now - window[0] < self.interval_s:
                continue
            if window[1]:
                self.log.warning("rejected %d more frames from sensor %s (%s) in the last %.0f s",
                                 window[1], sensor, reason, now - window[0])
                self._windows[(sensor, reason)] = [now, 0]
            else:
                del self._windows[(sensor, reason)]  # quiet for a whole interval: the next one is "first" again
