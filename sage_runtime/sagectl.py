"""`sagectl`: inspect and steer a running sage-runtime over its control socket.

Exit codes: 0 healthy (or command done), 1 degraded, 2 usage or command error, or no permission on
the control socket (the message says who has it), 3 not running.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from typing import Any

import yaml

from sage_runtime.client import ControlAccessDenied, ControlClient, ControlError, DaemonNotRunning

EXIT_OK, EXIT_DEGRADED, EXIT_ERROR, EXIT_NOT_RUNNING = 0, 1, 2, 3


def _fmt(value: Any, unit: str = "") -> str:
    return "-" if value is None else f"{value}{unit}"


def render_status(s: dict[str, Any]) -> str:
    t, st, atp = s["tick"], s.get("state", {}), s.get("atp", {})
    lines = [
        f"sage-runtime {s['version']}  pid {s['pid']}  up {s['uptime_s']:.0f} s  device {s['device']}",
        f"health    {s['health']}" + (f"  ({'; '.join(s['health_reasons'])})" if s["health_reasons"] else ""),
        f"state     {st.get('name', '-')} for {_fmt(st.get('since_s'), ' s')}  reason: {st.get('reason', '-')}",
    ]
    if atp:
        lines.append(f"atp       {atp.get('level', 0):.1f} / {atp.get('capacity', 0):.0f}"
                     f"  recharge {_fmt(atp.get('recharge_per_s'), '/s')}")
    lines.append(f"tick      {t['rate_hz']} Hz  n={t['count']}  p50 {_fmt(t['p50_ms'], ' ms')}"
                 f"  p99 {_fmt(t['p99_ms'], ' ms')}  budget {t['budget_ms']} ms  overruns {t['overruns']}"
                 f"  late p99 {_fmt(t['lateness_p99_ms'], ' ms')}")
    sensors = s["ingest"]["sensors"]
    lines.append(f"sensors   {len(sensors)}")
    if sensors:
        lines.append(f"  {'id':<20} {'kind':<7} {'policy':<8} {'received':>9} {'accepted':>9} {'skipped':>8}"
                     f" {'dropped':>8} {'last_seq':>9} {'age_ms':>8}")
        for sid, x in sorted(sensors.items()):
            lines.append(f"  {sid:<20} {x['kind']:<7} {x['policy']:<8} {x['received']:>9} {x['accepted']:>9}"
                         f" {x['skipped']:>8} {x['dropped']:>8} {x['last_seq']:>9} {_fmt(x['age_ms']):>8}")
    rejected = s["ingest"]["rejected"]
    lines.append("rejected  " + (", ".join(f"{k}={v}" for k, v in sorted(rejected.items())) or "none"))
    plugins = s["plugins"]
    lines.append(f"plugins   {len(plugins)}")
    if plugins:
        lines.append(f"  {'name':<12} {'status':<9} {'runs':>7} {'errors':>7} {'p50_ms':>8} {'p99_ms':>8}"
                     f" {'step_ms':>8} {'last_halt':<10} {'held':>5} {'wait_s':>7}")
        for name, p in sorted(plugins.items()):
            lines.append(f"  {name:<12} {p['status']:<9} {p['runs']:>7} {p['errors']:>7} {_fmt(p['p50_ms']):>8}"
                         f" {_fmt(p['p99_ms']):>8} {_fmt(p['step_ms']):>8} {_fmt(p['last_halt']):<10}"
                         f" {p['held_frames']:>5} {p['waiting_s']:>7}")
    tel = s.get("telemetry")
    if tel:
        lines.append(f"telemetry {tel.get('provider', '-')}: {tel.get('summary', '')}")
    return "\n".join(lines)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="sagectl", description="Inspect and steer a running sage-runtime.")
    p.add_argument("--socket", default=os.environ.get("SAGECTL_SOCKET"),
                   help="control endpoint or socket path (default: $SAGECTL_SOCKET, else the runtime dir)")
    p.add_argument("--timeout", type=float, default=3.0, help="seconds to wait for a reply")
    sub = p.add_subparsers(dest="cmd", required=True)
    st = sub.add_parser("status", help="health, state, ATP, tick, sensors, plugins")
    st.add_argument("--json", action="store_true")
    for name, text in (("stats", "per-stage latency histograms"), ("config", "the effective configuration"),
                       ("plugins", "per-plugin table"), ("trust", "trust ledger"),
                       ("reload", "re-read the config like SIGHUP")):
        q = sub.add_parser(name, help=text)
        q.add_argument("--json", action="store_true")
    state = sub.add_parser("state", help="show the metabolic state, or force one for a while")
    state_sub = state.add_subparsers(dest="action")
    state_sub.add_parser("show")
    sset = state_sub.add_parser("set")
    sset.add_argument("state", choices=["WAKE", "FOCUS", "DREAM", "CRISIS", "REST"], type=str.upper)
    sset.add_argument("--for", dest="duration", default="60s", help="how long, e.g. 30s, 5m (default 60s)")
    state_sub.add_parser("clear", help="drop a manual override now")
    for name in ("pause", "resume"):
        q = sub.add_parser(name, help=f"{name} a plugin")
        q.add_argument("plugin")
    return p


def parse_duration(text: str) -> float:
    units = {"ms": 1e-3, "s": 1.0, "m": 60.0, "h": 3600.0}
    for suffix in ("ms", "s", "m", "h"):
        if text.endswith(suffix):
            return float(text[: -len(suffix)]) * units[suffix]
    return float(text)


def _endpoint(sock: str | None) -> str | None:
    if sock and "://" not in sock:
        return f"ipc://{sock}"
    return sock


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    client = ControlClient(_endpoint(args.socket), timeout_s=args.timeout)
    try:
        if args.cmd == "status":
            status = client.status()
            print(json.dumps(status, indent=2) if args.json else render_status(status))
            return EXIT_OK if status["health"] == "ok" else EXIT_DEGRADED
        if args.cmd in ("pause", "resume"):
            result = client.call(args.cmd, plugin=args.plugin)
        elif args.cmd == "state":
            if args.action == "set":
                result = client.call("state", action="set", state=args.state, duration_s=parse_duration(args.duration))
            elif args.action == "clear":
                result = client.call("state", action="clear")
            else:
                result = client.call("state", action="show")
        else:
            result = client.call(args.cmd)
        if getattr(args, "json", False) or args.cmd in ("stats", "plugins", "trust", "state", "reload"):
            print(json.dumps(result, indent=2))
        else:
            print(yaml.safe_dump(result, sort_keys=False), end="")
        return EXIT_OK
    except DaemonNotRunning as exc:
        print(f"sagectl: sage-runtime is not running ({exc})", file=sys.stderr)
        return EXIT_NOT_RUNNING
    except ControlError as exc:
        print(f"sagectl: {exc}", file=sys.stderr)
        return EXIT_ERROR
    except ControlAccessDenied as exc:
        print(f"sagectl: {exc}", file=sys.stderr)
        return EXIT_ERROR
    except ValueError as exc:
        print(f"sagectl: {exc}", file=sys.stderr)
        return EXIT_ERROR


if __name__ == "__main__":
    sys.exit(main())
