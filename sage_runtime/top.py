"""`sagectl top`: a live view of a running daemon (like `jtop` or `dora top`).

Polls the control socket's `status` and turns the difference between two replies into rates:
per-sensor frames/s, per-plugin steps/s and ATP/s. The view is a pure function of two status
replies and the seconds between them (`render_top`), so it is tested without a terminal too.
"""

from __future__ import annotations

import time
from typing import Any

from rich.console import Console, Group, RenderableType
from rich.live import Live
from rich.text import Text

from sage_runtime.views import fmt, status_header, table


def _rate(now: dict[str, Any], before: dict[str, Any] | None, key: str, dt: float) -> float | None:
    if before is None or dt <= 0 or key not in before:
        return None
    return max(now[key] - before[key], 0) / dt


def render_top(now: dict[str, Any], before: dict[str, Any] | None, dt: float) -> RenderableType:
    """One screen: header (state, ATP, tick p50/p99), sensors with rate and staleness, plugins with
    steps and ATP per second since the previous screen."""
    sensors_before = (before or {}).get("ingest", {}).get("sensors", {})
    srows = []
    for sid, x in sorted(now["ingest"]["sensors"].items()):
        prev = sensors_before.get(sid)
        hz = _rate(x, prev, "received", dt)
        expected = x.get("expected_hz")
        srows.append([sid, x["kind"], x["modality"], hz, expected, x["age_ms"], x["received"], x["accepted"],
                      x["skipped"] + x["dropped"]])
    plugins_before = (before or {}).get("plugins", {})
    prows = []
    for name, p in sorted(now["plugins"].items()):
        prev = plugins_before.get(name)
        prows.append([name, p["status"], _rate(p, prev, "runs", dt), _rate(p, prev, "steps", dt), p.get("steps"),
                      _rate(p, prev, "atp_spent", dt), p.get("atp_spent"), p["p99_ms"], p["last_halt"]])
    rejected = sum(now["ingest"]["rejected"].values())
    footer = Text(f"rejected {rejected}  results sent {now['results']['sent']}  "
                  f"refresh {fmt(dt, ' s')}  (Ctrl-C quits)", style="dim")
    return Group(status_header(now),
                 table("sensors", ["sensor", "kind", "modality", "rate_hz", "expected_hz", "stale_ms",
                                   "received", "accepted", "lost"], srows),
                 table("plugins", ["plugin", "status", "runs/s", "steps/s", "steps", "atp/s", "atp",
                                   "p99_ms", "last_halt"], prows),
                 footer)


def run_top(status: Any, console: Console, *, interval_s: float = 1.0, iterations: int | None = None) -> int:
    """Redraw every `interval_s` until Ctrl-C (or after `iterations` screens); `status` fetches a reply."""
    before, t_before = None, time.monotonic()
    shown = 0
    try:
        with Live(console=console, auto_refresh=False, transient=False) as live:
            while iterations is None or shown < iterations:
                now, t_now = status(), time.monotonic()
                live.update(render_top(now, before, t_now - t_before), refresh=True)
                shown += 1
                before, t_before = now, t_now
                if iterations is None or shown < iterations:
                    time.sleep(interval_s)
    except KeyboardInterrupt:
        pass
    return 0
