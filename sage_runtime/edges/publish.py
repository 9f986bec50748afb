"""The results edge: a ZeroMQ PUB socket for `result/<plugin>` and `state` messages.

A PUB socket never blocks: a subscriber that does not read loses messages past SNDHWM, and
the daemon keeps ticking. Sends that libzmq refuses are counted, never retried.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

import zmq

from sage_runtime.records import RunResult
from sage_runtime.edges.security import EdgeSecurity, bind_edge
from sage_runtime.wire import encode_result, encode_state

log = logging.getLogger("sage.publish")


class ResultPublisher:
    """One PUB socket; with CurveZMQ keys a second, CURVE one for the TCP endpoints (each message
    goes out on both)."""

    def __init__(self, ctx: zmq.Context, endpoints: list[str], sndhwm: int,
                 security: EdgeSecurity | None = None) -> None:
        self.socks, self.endpoints = bind_edge(ctx, zmq.PUB, endpoints, "results",
                                               {zmq.SNDHWM: sndhwm, zmq.LINGER: 0}, security)
        self.sent = 0
        self.failed = 0
        self.taps: list[Callable[[list[Any]], None]] = []

    def add_tap(self, tap: Callable[[list[Any]], None]) -> None:
        """`tap(parts)` sees every message's wire v1 parts after the sockets (another transport: Zenoh)."""
        self.taps.append(tap)

    def _send(self, parts: list[Any]) -> None:
        self.sent += 1
        for sock in self.socks:
            try:
                sock.send_multipart(parts, flags=zmq.NOBLOCK, copy=False)
            except zmq.Again:
                self.failed += 1
            except zmq.ZMQError as exc:
                self.failed += 1
                log.warning("publish failed: %s", exc)
        for tap in self.taps:
            tap(parts)

    def result(self, res: RunResult, *, tick: int, ts_ns: int, state: str, inputs: dict[str, int]) -> None:
        header = {
            "plugin": res.plugin, "tick": tick, "ts_ns": ts_ns, "state": state, "energy": res.energy,
            "steps": res.steps, "halt": res.halt, "atp": round(res.atp_spent, 4),
            "latency_ms": round(res.latency_ms, 4), "inputs": inputs,
        }
        if res.error:
            header["error"] = res.error
        if res.detail:
            header["detail"] = res.detail
        self._send(encode_result(header, res.outputs))

    def state(self, header: dict[str, Any]) -> None:
        self._send(encode_state(header))

    def stats(self) -> dict[str, int]:
        return {"sent": self.sent, "failed": self.failed}

    def close(self) -> None:
        for sock in self.socks:
            sock.close(linger=0)
