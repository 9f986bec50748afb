"""Readable renderings (rich) of the daemon's control replies, for `sagectl` and `sagectl top`.

Pure functions from a reply (a dict) to a rich renderable: no sockets, so they are tested on
replies from a real daemon and reused by the live view.
"""

from __future__ import annotations

import json
import shutil
import sys
from typing import Any

from rich import box
from rich.console import Console, Group, RenderableType
from rich.table import Table
from rich.text import Text

#: Width used when stdout is not a terminal (pipes, logs): wide enough for 40-character sensor ids.
PIPE_WIDTH = 160


def console(file: Any = None) -> Console:
    out = file or sys.stdout
    width = shutil.get_terminal_size((PIPE_WIDTH, 40)).columns if out.isatty() else PIPE_WIDTH
    return Console(file=out, width=width, highlight=False, soft_wrap=False)


def fmt(value: Any, unit: str = "") -> str:
    """One cell: None as '-', floats to at most 3 significant decimals, lists comma-joined."""
    if value is None:
        return "-"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, float):
        text = f"{value:.3f}".rstrip("0").rstrip(".") if abs(value) < 1000 else f"{value:.0f}"
        return text + unit
    if isinstance(value, (list, tuple)):
        return ", ".join(fmt(v) for v in value) or "-"
    if isinstance(value, dict):
        return ", ".join(f"{k}={fmt(v)}" for k, v in value.items()) or "-"
    return f"{value}{unit}"


def table(title: str | None, columns: list[str], rows: list[list[Any]], *, first_fold: bool = True) -> Table:
    """A table whose first column (an id) folds instead of pushing the others out of line."""
    t = Table(title=title, box=box.SIMPLE_HEAD, title_justify="left", pad_edge=False)
    for i, name in enumerate(columns):
        if i == 0:
            t.add_column(name, overflow="fold" if first_fold else "ellipsis", no_wrap=not first_fold)
        else:
            t.add_column(name, justify="right" if rows and _numeric(rows[0][i]) else "left", no_wrap=True)
    for row in rows:
        t.add_row(*(fmt(v) for v in row))
    return t


def _numeric(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) or value is None


def kv(mapping: dict[str, Any], title: str | None = None) -> RenderableType:
    """Key/value pairs; nested maps become `key.sub` rows."""
    t = Table.grid(padding=(0, 2))
    t.add_column(style="bold")
    t.add_column()
    for key, value in _flatten(mapping):
        t.add_row(key, fmt(value))
    return Group(Text(title, style="bold underline"), t) if title else t


def _flatten(mapping: dict[str, Any], prefix: str = "") -> list[tuple[str, Any]]:
    rows: list[tuple[str, Any]] = []
    for key, value in mapping.items():
        if isinstance(value, dict) and value and all(not isinstance(v, dict) for v in value.values()) \
                and len(value) > 6:
            rows.append((f"{prefix}{key}", value))
        elif isinstance(value, dict) and value:
            rows += _flatten(value, f"{prefix}{key}.")
        else:
            rows.append((f"{prefix}{key}", value))
    return rows


def status_header(s: dict[str, Any]) -> Table:
    t, st, atp = s["tick"], s.get("state", {}), s.get("atp", {})
    health = Text(s["health"], style="green" if s["health"] == "ok" else "bold red")
    if s["health_reasons"]:
        health.append(f"  ({'; '.join(s['health_reasons'])})")
    grid = Table.grid(padding=(0, 2))
    grid.add_column(style="bold")
    grid.add_column()
    grid.add_row("sage-runtime", f"{s['version']}  pid {s['pid']}  up {s['uptime_s']:.0f} s  device {s['device']}")
    grid.add_row("health", health)
    grid.add_row("state", f"{st.get('name', '-')} for {fmt(st.get('since_s'), ' s')}  reason: {st.get('reason', '-')}"
                 + (f"  override {fmt(st['override_left_s'], ' s')} left" if st.get("override_left_s") else ""))
    if atp:
        grid.add_row("atp", f"{atp.get('level', 0):.1f} / {atp.get('capacity', 0):.0f}"
                     f"  recharge {fmt(atp.get('recharge_per_s'), '/s')}")
    grid.add_row("tick", f"{t['rate_hz']} Hz  n={t['count']}  p50 {fmt(t['p50_ms'], ' ms')}  p99 {fmt(t['p99_ms'], ' ms')}"
                 f"  budget {t['budget_ms']} ms  overruns {t['overruns']}  late p99 {fmt(t['lateness_p99_ms'], ' ms')}")
    return grid


SENSOR_COLUMNS = ["sensor", "kind", "policy", "modality", "received", "accepted", "skipped", "dropped",
                  "pending", "last_seq", "age_ms"]
PLUGIN_COLUMNS = ["plugin", "status", "runs", "steps", "errors", "p50_ms", "p99_ms", "step_ms", "atp_spent",
                  "last_halt", "held", "wait_s", "runs_in"]


def sensors_table(sensors: dict[str, Any]) -> Table:
    rows = [[sid] + [x.get(c) for c in SENSOR_COLUMNS[1:]] for sid, x in sorted(sensors.items())]
    return table(f"sensors ({len(sensors)})", SENSOR_COLUMNS, rows)


def runs_in(p: dict[str, Any]) -> str:
    """Where a plugin's code runs: the daemon's thread, or its worker process and its restarts."""
    if p.get("isolation") != "process":
        return "thread"
    pid = p.get("worker_pid")
    where = f"pid {pid}" if pid is not None else "no worker"
    return where + (f" ({p['worker_restarts']} restarts)" if p.get("worker_restarts") else "")


def plugins_table(plugins: dict[str, Any]) -> Table:
    rows = [[name, p["status"], p["runs"], p.get("steps"), p["errors"], p["p50_ms"], p["p99_ms"], p["step_ms"],
             p.get("atp_spent"), p["last_halt"], p.get("held_frames"), p.get("waiting_s"), runs_in(p)]
            for name, p in sorted(plugins.items())]
    return table(f"plugins ({len(plugins)})", PLUGIN_COLUMNS, rows)


def render_status(s: dict[str, Any]) -> RenderableType:
    rejected = s["ingest"]["rejected"]
    parts: list[RenderableType] = [status_header(s), sensors_table(s["ingest"]["sensors"]),
                                   Text("rejected  " + (fmt(dict(sorted(rejected.items()))) if rejected else "none")),
                                   plugins_table(s["plugins"])]
    tap = s.get("tap")
    if tap:
        parts.append(Text(f"tap  recorders {tap['subscriptions']} (ever {tap.get('subscribed_total', '-')})  "
                          f"sent {tap['sent']}  dropped {tap['dropped']}", style="bold red" if tap["dropped"] else ""))
    tel = s.get("telemetry")
    if tel:
        parts.append(Text(f"telemetry {tel.get('provider', '-')}: {tel.get('summary', '')}"))
    return Group(*parts)


def render_stats(s: dict[str, Any]) -> RenderableType:
    rows = [[name, w["count"], w["p50_ms"], w["p99_ms"], w["max_ms"]] for name, w in s["stages"].items()]
    return Group(table("stages (ms)", ["stage", "count", "p50", "p99", "max"], rows),
                 kv(s["tick"], "tick"), kv(s["results"], "results"))


def render_trust(s: dict[str, Any]) -> RenderableType:
    plugins = [[n, p["trust"], p["runs"], p["errors"], p["paused"]] for n, p in s.get("plugins", {}).items()]
    sensors = [[n, v] for n, v in s.get("sensors", {}).items()]
    experts = [[ctx, fmt(t)] for ctx, t in s.get("experts", {}).items()]
    rest = {k: v for k, v in s.items() if k not in ("plugins", "sensors", "experts")}
    return Group(table("plugins", ["plugin", "trust", "runs", "errors", "paused"], plugins),
                 table("sensors", ["sensor", "trust"], sensors),
                 table("experts (context: plugin=trust)", ["context", "trust"], experts), kv(rest))


def render_reload(r: dict[str, Any]) -> RenderableType:
    if not r.get("ok"):
        return Text(f"reload refused, the running config is kept:\n{r.get('error', '')}", style="bold red")
    return kv({"applied": r.get("applied") or "nothing", "needs restart": r.get("needs_restart") or "nothing"})


def render_config(cfg: dict[str, Any]) -> RenderableType:
    rows = []
    for section, body in cfg.items():
        for key, value in (body.items() if isinstance(body, dict) else [("", body)]):
            rows.append([f"{section}.{key}" if key else section, _compact(value)])
    return table(None, ["key", "value"], rows)


def _compact(value: Any) -> str:
    return value if isinstance(value, str) else json.dumps(value, separators=(",", ":"))


def render_plugin_change(r: dict[str, Any]) -> RenderableType:
    return Text(f"{r['plugin']}: {r['status']}")
