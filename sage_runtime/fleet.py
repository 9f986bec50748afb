"""The fleet as a client sees it over Zenoh (`sagectl fleet`): robots alive, with their last status.

Alive means the robot's liveliness token `sage/<robot_id>/alive` is declared now; Zenoh drops it
when the daemon's session ends or its lease runs out, so a dead robot leaves the list by itself.
Needs the `zenoh` extra.
"""

from __future__ import annotations

import json
import re
import time
from typing import Any

import msgpack
import zenoh

from sage_runtime.config import ZenohSection
from sage_runtime.edges.zenoh_bridge import ROOT

_ANY_HOST = re.compile(r"(?<=/)(0\.0\.0\.0|\[::\])(?=:)")


def client_endpoints(cfg: ZenohSection, connect: list[str] | None) -> list[str]:
    """`--connect` wins; else the config's connect endpoints; else its listen ones, on loopback."""
    if connect:
        return connect
    if cfg.connect:
        return list(cfg.connect)
    return [_ANY_HOST.sub(lambda m: "[::1]" if m.group(0) == "[::]" else "127.0.0.1", ep) for ep in cfg.listen]


def open_client(cfg: ZenohSection, endpoints: list[str], timeout_s: float) -> zenoh.Session:
    """A Zenoh client session on `endpoints` (TLS from the config); ZError when none answers."""
    conf = zenoh.Config()
    conf.insert_json5("mode", json.dumps("client"))
    conf.insert_json5("connect/endpoints", json.dumps(endpoints))
    conf.insert_json5("connect/timeout_ms", json.dumps(int(timeout_s * 1000)))
    conf.insert_json5("scouting/multicast/enabled", json.dumps(cfg.multicast_scouting))
    if cfg.tls is not None:
        conf.insert_json5("transport/link/tls", json.dumps(cfg.tls))
    return zenoh.open(conf)


def _robot_of(key: str) -> str:
    return key.split("/")[1]


def fleet_view(session: zenoh.Session, timeout_s: float = 2.0) -> dict[str, Any]:
    """`{"robots": [{robot_id, state, health, tick_p99_ms, atp, age_s, ...}]}`, sorted by robot id."""
    alive = sorted({_robot_of(str(r.ok.key_expr))
                    for r in session.liveliness().get(f"{ROOT}/*/alive", timeout=timeout_s) if r.ok is not None})
    last: dict[str, dict[str, Any]] = {}
    for reply in session.get(f"{ROOT}/*/status", timeout=timeout_s):
        if reply.ok is None:
            continue
        try:
            summary = msgpack.unpackb(reply.ok.payload.to_bytes(), raw=False)
        except Exception:  # noqa: BLE001 - a robot speaking another version is listed without status
            continue
        if isinstance(summary, dict):
            last[_robot_of(str(reply.ok.key_expr))] = summary
    now = time.time()
    robots = []
    for rid in alive:
        s = last.get(rid, {})
        ts = s.get("ts")
        robots.append({"robot_id": rid, "state": s.get("state"), "health": s.get("health"),
                       "tick_p99_ms": s.get("tick_p99_ms"), "atp": s.get("atp"),
                       "age_s": round(max(0.0, now - ts), 3) if isinstance(ts, (int, float)) else None,
                       "plugins": s.get("plugins", {}), "version": s.get("version")})
    return {"robots": robots}


def render_fleet(view: dict[str, Any]) -> str:
    robots = view["robots"]
    if not robots:
        return "no robots alive on this Zenoh network"
    lines = [f"{'robot_id':<20} {'state':<7} {'health':<9} {'tick_p99_ms':>11} {'atp':>9} {'age_s':>6}  plugins"]
    for r in robots:
        atp = "-" if r["atp"] is None else f"{r['atp']:.0f}"
        p99 = "-" if r["tick_p99_ms"] is None else f"{r['tick_p99_ms']}"
        age = "-" if r["age_s"] is None else f"{r['age_s']:.1f}"
        plugins = ", ".join(f"{n}:{st}" for n, st in sorted(r["plugins"].items())) or "-"
        lines.append(f"{r['robot_id']:<20} {r['state'] or '-':<7} {r['health'] or '-':<9} {p99:>11} {atp:>9}"
                     f" {age:>6}  {plugins}")
    return "\n".join(lines)
