"""The status document (`sagectl status`, the control `status` command), the systemd STATUS line
and health: read-only views over the daemon's parts, built in one place."""

from __future__ import annotations

import contextlib
import os
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sage_runtime import __version__
from sage_runtime.cognition.status import cognition_status
from sage_runtime.plugin.priority import scheduling_report

STATUS_SCHEMA_VERSION = 1
STATE_PROBE_INTERVAL_S = 5.0


def probe_writable(directory: Path) -> str | None:
    """Write and remove 4 KiB in `directory`; the error text when that fails."""
    try:
        with tempfile.NamedTemporaryFile(dir=directory, prefix=".probe.") as f:
            f.write(b"\0" * 4096)
            f.flush()
    except OSError as exc:
        return f"{exc.strerror or exc} ({directory})"
    return None


def process_stats() -> dict[str, Any]:
    """The daemon's own footprint from procfs (None where there is none): RSS, open fds, threads."""
    rss = None
    with contextlib.suppress(OSError, ValueError, IndexError):
        rss = int(Path("/proc/self/statm").read_text().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    fds = None
    with contextlib.suppress(OSError):
        fds = len(os.listdir("/proc/self/fd"))
    threads = None
    with contextlib.suppress(OSError, ValueError, StopIteration):
        status = Path("/proc/self/status").read_text()
        threads = int(next(line for line in status.splitlines() if line.startswith("Threads:")).split()[1])
    return {"rss_bytes": rss, "open_fds": fds, "threads": threads}


@dataclass
class StatusReport:
    """The parts a status document reads (typed loosely: this module imports none of them, so
    it stays below the daemon in the import graph)."""

    cfg: Callable[[], Any]  # the config now applied (it changes on reload)
    device: str
    runtime_dir: Path
    state_dir: Path
    orch: Any
    cognition: Any
    table: Any
    ingest: Any
    publisher: Any
    security: Any
    mailbox: Any
    control: Any
    telemetry: Any
    capabilities: dict[str, Any]
    last_reload: Callable[[], dict[str, Any] | None]
    #: The Zenoh fleet edge, when one runs (its counters show under `zenoh`).
    fleet: Any = None
    started: float = 0.0
    _probe: tuple[float, str | None] = (-STATE_PROBE_INTERVAL_S, None)

    def __post_init__(self) -> None:
        self.started = self.started or time.monotonic()

    def state_dir_error(self) -> str | None:
        """Why the state dir cannot take a write (None when it can), probed at most every few
        seconds: a full or read-only disk must show in status before a save fails."""
        now = time.monotonic()
        if now - self._probe[0] >= STATE_PROBE_INTERVAL_S:
            self._probe = (now, probe_writable(self.state_dir))
        return self._probe[1]

    def health(self) -> tuple[str, list[str]]:
        reasons = []
        for name, p in self.orch.plugins_summary().items():
            if p["status"] not in ("ok", "paused"):
                reasons.append(f"plugin {name} {p['status']}")
            reasons += [f"plugin {name}: {r}" for r in p.get("health_reasons", ())]
        if self.orch.deadline_miss_rate() > 0.2:
            reasons.append(f"deadline misses {self.orch.deadline_miss_rate():.0%}")
        reasons += self.orch.health_reasons()  # tick p99 over budget
        reasons += self.cognition.trust_store.health_reasons()
        reasons += self.table.capacity_reasons()
        state_dir_error = self.state_dir_error()
        if state_dir_error:
            reasons.append(f"state dir not writable: {state_dir_error}")
        return ("degraded" if reasons else "ok"), reasons

    def status(self) -> dict[str, Any]:
        health, reasons = self.health()
        return {
            "schema_version": STATUS_SCHEMA_VERSION, "version": __version__, "pid": os.getpid(),
            "health": health, "health_reasons": reasons, "uptime_s": round(time.monotonic() - self.started, 3),
            "device": self.device, "runtime_dir": str(self.runtime_dir), "state_dir": str(self.state_dir),
            **cognition_status(self.cognition),
            "tick": self.orch.tick_summary(),
            "state_dir_error": self.state_dir_error(),
            "process": process_stats(),
            "ingest": {**self.table.stats(), "messages": self.ingest.messages, "endpoints": self.ingest.endpoints,
                       "internal_errors": self.ingest.internal_errors, "auth": self.security.stats("ingest"),
                       "shm": self.ingest.shm.stats() if self.ingest.shm is not None else None},
            "tap": self.ingest.tap.stats() if self.ingest.tap is not None else None,
            "plugins": self.orch.plugins_summary(),
            "results": {**self.publisher.stats(), "endpoints": self.publisher.endpoints,
                        "auth": self.security.stats("results")},
            "mailbox": self.mailbox.stats(),
            "control": {"requests": self.control.requests, "bad_requests": self.control.bad_requests,
                        "refused": dict(self.control.refused), "auth": self.security.stats("control")},
            "last_reload": self.last_reload(),
            "telemetry": self.telemetry.status(self.cfg().telemetry),
            "capabilities": {**self.capabilities, "scheduling": scheduling_report()},
            "zenoh": self.fleet.stats() if self.fleet is not None else None,
        }

    def stats(self) -> dict[str, Any]:
        return {"stages": self.orch.stages.summary(), "tick": self.orch.tick_summary(),
                "ingest": self.table.stats(), "results": self.publisher.stats()}

    def line(self) -> str:
        """The one-line summary systemd shows (STATUS=)."""
        t = self.orch.tick_summary()
        plugins = self.orch.plugins_summary()
        ok = sum(1 for p in plugins.values() if p["status"] == "ok")
        return (f"{self.cognition.state} tick p99 {t['p99_ms']} ms/{t['budget_ms']} ms, "
                f"{len(self.table.sensors)} sensors, plugins {ok}/{len(plugins)} ok, "
                f"rejected {sum(self.table.rejected.values())}")
