"""`sagectl`: inspect and steer a running sage-runtime over its control socket.

Every subcommand prints a readable table (rich) by default and the daemon's JSON reply with `--json`;
exit codes: EXIT_CODES below (also in `sagectl --help`).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from typing import Any

from sage_runtime import __version__
from sage_runtime.client import ControlAccessDenied, ControlClient, ControlError, DaemonNotRunning

EXIT_OK, EXIT_DEGRADED, EXIT_ERROR, EXIT_NOT_RUNNING = 0, 1, 2, 3

EXIT_CODES = """exit codes:
  0  done (status: healthy)
  1  status: the daemon is degraded (reasons in health_reasons)
  2  usage error, the daemon refused the command (e.g. reload of an invalid file), or no
     permission on the control socket (the message says who has it)
  3  the daemon is not running (no control socket, or no reply within --timeout)
"""


def _json_parent() -> argparse.ArgumentParser:
    parent = argparse.ArgumentParser(add_help=False)
    parent.add_argument("--json", action="store_true", help="print the daemon's reply as JSON")
    return parent


def _add_recording(sub: Any, parent: argparse.ArgumentParser) -> None:
    rec = sub.add_parser("record", parents=[parent], help="record what the daemon ingests to an MCAP file")
    rec.add_argument("out", metavar="OUT.mcap")
    rec.add_argument("--duration", type=float, default=None, help="seconds to record (default: until Ctrl-C)")
    rec.add_argument("--sensors", nargs="+", metavar="ID", help="only these sensors (default: all)")
    rec.add_argument("--results", action="store_true", help="also record results and state transitions")
    rep = sub.add_parser("replay", parents=[parent], help="publish an MCAP recording into a running daemon")
    rep.add_argument("input", metavar="IN.mcap")
    speed = rep.add_mutually_exclusive_group()
    speed.add_argument("--speed", type=float, default=1.0, help="time scale (2 = twice as fast; default 1)")
    speed.add_argument("--max", action="store_true", help="as fast as possible, no timing")
    rep.add_argument("--loop", action="store_true", help="start over at the end, until Ctrl-C")
    rep.add_argument("--ingest", metavar="ENDPOINT", help="ingest endpoint (default: the daemon's, from status)")


def build_parser() -> argparse.ArgumentParser:
    j = _json_parent()
    p = argparse.ArgumentParser(prog="sagectl", description="Inspect and steer a running sage-runtime.",
                                epilog=EXIT_CODES, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--version", action="version", version=f"sagectl {__version__}")
    p.add_argument("--socket", default=os.environ.get("SAGECTL_SOCKET"),
                   help="control endpoint or socket path (default: $SAGECTL_SOCKET, else the runtime dir)")
    p.add_argument("--timeout", type=float, default=3.0, help="seconds to wait for a reply")
    sub = p.add_subparsers(dest="cmd", required=True)
    for name, text in (("status", "health, state, ATP, tick, sensors, plugins"),
                       ("stats", "per-stage latency histograms"), ("config", "the effective configuration"),
                       ("plugins", "per-plugin table"), ("trust", "trust ledger"),
                       ("reload", "re-read the config like SIGHUP (exit 2 when the daemon refuses the file)")):
        sub.add_parser(name, parents=[j], help=text)
    state = sub.add_parser("state", parents=[j], help="show the metabolic state, or force one for a while")
    state_sub = state.add_subparsers(dest="action")
    state_sub.add_parser("show", parents=[j])
    sset = state_sub.add_parser("set", parents=[j])
    sset.add_argument("state", choices=["WAKE", "FOCUS", "DREAM", "CRISIS", "REST"], type=str.upper)
    sset.add_argument("--for", dest="duration", default="60s", help="how long, e.g. 30s, 5m (default 60s)")
    state_sub.add_parser("clear", parents=[j], help="drop a manual override now")
    for name in ("pause", "resume"):
        q = sub.add_parser(name, parents=[j], help=f"{name} a plugin")
        q.add_argument("plugin")
    top = sub.add_parser("top", help="live view: state, ATP, tick, sensor rates and staleness, plugin steps and ATP")
    top.add_argument("--interval", type=float, default=1.0, help="seconds between screens (default 1)")
    top.add_argument("--iterations", type=int, default=None, help="stop after this many screens")
    _add_recording(sub, j)
    fleet = sub.add_parser("fleet", parents=[j], help="robots alive on the Zenoh network and their last status "
                           "(zenoh extra)")
    fleet.add_argument("--connect", action="append", metavar="LOCATOR",
                       help="Zenoh endpoint to join, e.g. tcp/127.0.0.1:7447 (repeatable; default: the config's)")
    fleet.add_argument("--config", metavar="PATH", help="daemon config whose zenoh section to use")
    return p


def fleet_command(args: argparse.Namespace) -> int:
    """`sagectl fleet`: a Zenoh client session, not the control socket."""
    from sage_runtime.config import ConfigError, load_config

    try:
        from sage_runtime import fleet
    except ImportError as exc:
        print(f"sagectl: fleet needs the zenoh extra: pip install 'sage-runtime[zenoh]' ({exc})", file=sys.stderr)
        return EXIT_ERROR
    try:
        cfg = load_config(args.config).zenoh
    except ConfigError as exc:
        print(f"sagectl: {exc}", file=sys.stderr)
        return EXIT_ERROR
    endpoints = fleet.client_endpoints(cfg, args.connect)
    if not endpoints:
        print("sagectl: fleet: no Zenoh endpoint; give --connect tcp/HOST:PORT or zenoh.connect in --config",
              file=sys.stderr)
        return EXIT_ERROR
    try:
        session = fleet.open_client(cfg, endpoints, args.timeout)
    except Exception as exc:  # noqa: BLE001 - zenoh.ZError: nothing answers on those endpoints
        print(f"sagectl: fleet: cannot join Zenoh at {', '.join(endpoints)}: {exc}", file=sys.stderr)
        return EXIT_NOT_RUNNING
    try:
        view = fleet.fleet_view(session, timeout_s=args.timeout)
    finally:
        session.close()
    print(json.dumps(view, indent=2) if args.json else fleet.render_fleet(view))
    return EXIT_OK


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


def _request(client: ControlClient, args: argparse.Namespace) -> Any:
    if args.cmd in ("pause", "resume"):
        return client.call(args.cmd, plugin=args.plugin)
    if args.cmd == "state":
        if args.action == "set":
            return client.call("state", action="set", state=args.state, duration_s=parse_duration(args.duration))
        return client.call("state", action="clear" if args.action == "clear" else "show")
    return client.call(args.cmd)


def _render(cmd: str, result: Any) -> Any:
    from sage_runtime import views

    renderers = {"status": views.render_status, "stats": views.render_stats, "plugins": views.plugins_table,
                 "trust": views.render_trust, "reload": views.render_reload, "config": views.render_config,
                 "pause": views.render_plugin_change, "resume": views.render_plugin_change}
    return renderers.get(cmd, views.kv)(result)


def _exit_code(cmd: str, result: Any) -> int:
    if cmd == "status":
        return EXIT_OK if result["health"] == "ok" else EXIT_DEGRADED
    if cmd == "reload" and not result.get("ok"):
        return EXIT_ERROR
    return EXIT_OK


def _run_tool(client: ControlClient, args: argparse.Namespace) -> int:
    """The subcommands that run for a while (top, record, replay) rather than ask once."""
    from sage_runtime import views

    if args.cmd == "top":
        from sage_runtime.top import run_top

        client.status()  # fail fast (exit 3) when nothing answers
        return run_top(client.status, views.console(), interval_s=args.interval, iterations=args.iterations)
    from sage_runtime import recording

    return recording.main(client, args)


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.cmd == "fleet":
        return fleet_command(args)
    client = ControlClient(_endpoint(args.socket), timeout_s=args.timeout)
    try:
        if args.cmd in ("top", "record", "replay"):
            return _run_tool(client, args)
        result = _request(client, args)
        if args.json:
            print(json.dumps(result, indent=2))
        else:
            from sage_runtime.views import console

            console().print(_render(args.cmd, result))
        return _exit_code(args.cmd, result)
    except DaemonNotRunning as exc:
        print(f"sagectl: sage-runtime is not running ({exc})", file=sys.stderr)
        return EXIT_NOT_RUNNING
    except (ControlError, ControlAccessDenied) as exc:
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
