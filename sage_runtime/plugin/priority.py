"""OS priority of the tick and of plugin threads (Linux; a no-op elsewhere).

The tick must win the CPU from busy plugin threads on a 2-core box. Unprivileged code may lower
a thread's priority but not raise it, so: the tick thread asks for SCHED_FIFO (allowed with
CAP_SYS_NICE or RLIMIT_RTPRIO), and every plugin thread lowers itself with a per-thread nice
(`os.setpriority` on its native thread id: Linux nice values are per thread). What was achieved
is reported in `status.capabilities.scheduling`.
"""

from __future__ import annotations

import logging
import os
import threading

log = logging.getLogger("sage.priority")

#: What the tick thread got ("SCHED_FIFO n" or "nice n") and what plugin threads got, by name.
REPORT: dict[str, object] = {"tick": "default", "plugins": {}}


def raise_tick_priority(fifo_priority: int = 10) -> str:
    """Put the calling thread (the tick) under SCHED_FIFO when permitted; else leave it at nice 0
    (plugin threads go below it). Returns what it got."""
    got = "nice 0 (SCHED_OTHER; plugin threads are niced below it)"
    if hasattr(os, "sched_setscheduler"):
        try:
            os.sched_setscheduler(0, os.SCHED_FIFO, os.sched_param(fifo_priority))
            got = f"SCHED_FIFO {fifo_priority}"
        except (PermissionError, OSError) as exc:
            log.info("SCHED_FIFO for the tick not permitted (%s); plugin threads are niced instead", exc)
    REPORT["tick"] = got
    return got


def tick_priority() -> str:
    return str(REPORT["tick"])


def tick_is_realtime() -> bool:
    return str(REPORT["tick"]).startswith("SCHED_FIFO")


def host_thread_priority(name: str) -> str:
    """A worker process's host thread (plugin/worker.py): SCHED_FIFO one below the tick when the
    tick has it, so the thread never waits for a CPU behind busy processes while it holds the
    GIL for a moment per request (it blocks on its worker the rest of the time); else nice 0."""
    if not tick_is_realtime():
        return lower_thread_priority(name, 0)
    got = "default"
    try:
        fifo = max(int(str(REPORT["tick"]).split()[1]) - 1, 1)
        os.sched_setscheduler(0, os.SCHED_FIFO, os.sched_param(fifo))
        got = f"SCHED_FIFO {fifo} (host of a worker process)"
    except (OSError, ValueError, IndexError) as exc:
        return lower_thread_priority(name, 0) + f" (SCHED_FIFO refused: {exc})"
    plugins = REPORT["plugins"]
    assert isinstance(plugins, dict)
    plugins[name] = got
    return got


def lower_thread_priority(name: str, nice: int) -> str:
    """Lower the calling thread by `nice` (per-thread on Linux) unless the tick runs under
    SCHED_FIFO, which already preempts every SCHED_OTHER thread: a niced plugin thread also
    loses the CPU to every other process on a shared box, which inflates its measured step cost.
    What it got, for status."""
    got = "default"
    if tick_is_realtime():
        nice = 0
    if hasattr(os, "setpriority"):
        tid = threading.get_native_id()
        if hasattr(os, "sched_setscheduler"):
            try:  # threads inherit SCHED_FIFO from a tick that got it; plugin threads must not
                os.sched_setscheduler(0, os.SCHED_OTHER, os.sched_param(0))
            except OSError:
                pass
        try:
            if nice > 0:
                os.setpriority(os.PRIO_PROCESS, tid, min(os.getpriority(os.PRIO_PROCESS, tid) + nice, 19))
            got = f"nice {os.getpriority(os.PRIO_PROCESS, tid)}"
        except OSError as exc:
            got = f"unchanged ({exc.strerror})"
    plugins = REPORT["plugins"]
    assert isinstance(plugins, dict)
    plugins[name] = got
    return got


class ThreadSchedstat:
    """(ns on a CPU, ns runnable but waiting for a CPU, runnable now) of one thread of this
    process, from the kernel's schedstat and stat. The hang check reads it: a plugin thread on a
    loaded box can wait a second for a CPU, which is slowness, not a hang. The kernel adds a wait
    to schedstat only once the thread runs again, so a wait in progress shows in neither counter:
    the thread's state (R, runnable) says so (a SCHED_IDLE thread beside a busy process showed no
    schedstat change for 1.27 s, then 1,272 ms of wait at once). One descriptor per file stays
    open for the thread's life (read with pread): an open per read showed as a passing descriptor
    in the soak's leak check. `open` gives None where the kernel does not say (not Linux)."""

    def __init__(self, schedstat_fd: int, stat_fd: int) -> None:
        self._fds: tuple[int, int] | None = (schedstat_fd, stat_fd)
        self._lock = threading.Lock()  # a close on the host thread never races a read on the tick's

    @classmethod
    def open(cls, tid: int, pid: int | str = "self") -> "ThreadSchedstat | None":
        """Thread `tid` of process `pid` (this one by default; a plugin worker's main thread)."""
        fds: list[int] = []
        try:
            for name in ("schedstat", "stat"):
                fds.append(os.open(f"/proc/{pid}/task/{tid}/{name}", os.O_RDONLY | os.O_CLOEXEC))
        except (OSError, AttributeError):
            for fd in fds:
                os.close(fd)
            return None
        return cls(*fds)

    def read(self) -> tuple[int, int, bool] | None:
        with self._lock:
            if self._fds is None:
                return None
            try:
                run, wait = os.pread(self._fds[0], 128, 0).split()[:2]
                stat = os.pread(self._fds[1], 1024, 0)
                state = stat[stat.rindex(b")") + 2:][:1]  # the field after "(comm)", which may hold spaces
                return int(run), int(wait), state == b"R"
            except (OSError, ValueError):
                return None

    def close(self) -> None:
        with self._lock:
            fds, self._fds = self._fds, None
        for fd in fds or ():
            os.close(fd)


def scheduling_report() -> dict[str, object]:
    """For `status.capabilities.scheduling`: what the tick and each plugin thread got, and the
    GIL switch interval plugin threads run under."""
    import sys

    return {"tick": REPORT["tick"], "plugins": dict(REPORT["plugins"]),  # type: ignore[call-overload]
            "gil_switch_interval_ms": round(sys.getswitchinterval() * 1e3, 3)}
