"""The state machine on the real daemon, driven by real ZeroMQ input, seen on the `state` topic.

calm stream -> stays WAKE; sustained salient stream -> FOCUS; FOCUS burns the ATP reservoir ->
REST; a critical event -> CRISIS in the tick that took it; no input with stored memories ->
DREAM, which consolidates; new input -> back to WAKE. The table is the shipped default; the test
config only shortens dwell and idle times and shrinks the reservoir so it runs in seconds.
"""

from __future__ import annotations

import time

import numpy as np
import pytest

from sage_runtime.client import ResultSubscriber, SensorPublisher
from sage_runtime.cognition.metabolic import DEFAULT_EDGES, DEFAULT_POLICIES
from tests.harness import DaemonProcess, wait_for


def _fast_table() -> dict:
    """The default table with idle thresholds cut from 30 s to 3 s; dwell 0.3 s everywhere."""
    edges = []
    for e in DEFAULT_EDGES:
        when = {k: (3.0 if k == "idle_above" else v) for k, v in e.when.items()}
        edges.append({"source": e.source.value, "target": e.target.value, "when": when})
    policies = {name: {"min_dwell_s": 0.3} for name in DEFAULT_POLICIES}
    return {"edges": edges, "policies": policies, "salience_half_life_s": 5.0}


CONFIG = {
    "tick": {"rate_hz": 50},
    "plugins": {"enabled": ["tests.plugins_for_tests:Burner", "tests.plugins_for_tests:Echo", "memory"],
                "options": {"burner": {"step_ms": 1.0}, "memory": {"store_threshold": 0.2}},
                "inputs": {"burner": ["imu"], "memory": ["cam"], "echo": ["alarm"]}},
    "metabolic": _fast_table(),
    "atp": {"capacity_atp": 100.0, "duty_cycle": 0.05},
    "ingest": {"sensors": {"imu": {"kind": "tensor", "policy": "latest", "expected_hz": 20},
                           "cam": {"kind": "tensor", "policy": "fifo:8", "dtype": "float32", "max_shape": [64]},
                           "alarm": {"kind": "event", "policy": "fifo:8"}}},
}


class StateWatch:
    """Collects `state` messages; `until(to)` waits for the next transition into `to`."""

    def __init__(self, sub: ResultSubscriber) -> None:
        self.sub = sub
        self.seen: list[dict] = []
        self.results: list = []

    def _take(self, msg) -> None:
        if msg.topic == "state":
            self.seen.append(msg.header)
        else:
            self.results.append(msg)

    def drain(self, seconds: float) -> None:
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            msg = self.sub.recv(timeout_s=0.02)
            if msg is not None:
                self._take(msg)

    def until(self, to: str, pump, timeout_s: float = 20.0) -> dict:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            pump()
            msg = self.sub.recv(timeout_s=0.02)
            while msg is not None:
                self._take(msg)
                if msg.topic == "state" and msg.header["to"] == to:
                    return msg.header
                msg = self.sub.recv(timeout_s=0)
        raise AssertionError(f"no transition to {to} in {timeout_s} s; saw {[(s['from'], s['to'], s['reason'], s.get('atp')) for s in self.seen]}")


@pytest.mark.slow
def test_calm_focus_rest_crisis_dream_wake(tmp_path):
    daemon = DaemonProcess(tmp_path, CONFIG).start()
    rng = np.random.default_rng(0)
    pub = SensorPublisher(daemon.ingest)
    sub = ResultSubscriber(daemon.results, topics=("state", "result/echo"))
    watch = StateWatch(sub)
    period = 0.05
    last = [0.0]

    def paced(make):
        def pump():
            if time.monotonic() - last[0] >= period:
                pub.tensor("imu", make())
                last[0] = time.monotonic()
        return pump

    calm = paced(lambda: np.full(32, 0.5, dtype=np.float32))
    def noisy():
        # Alongside, the camera shows distinct scenes: memories for DREAM to consolidate later.
        if rng.random() < 0.2:
            pub.tensor("cam", rng.standard_normal(64).astype(np.float32) * 5)
        return (rng.standard_normal(32) * 10 ** rng.uniform(-1, 2)).astype(np.float32)

    salient = paced(noisy)
    try:
        # Calm: a constant stream keeps the daemon in WAKE with nothing to report.
        wait_for(lambda: (calm(), daemon.status()["ingest"]["sensors"].get("imu", {}).get("accepted", 0) > 20)[1],
                 timeout_s=15, interval_s=0.02)
        status = daemon.status()
        assert status["state"]["name"] == "WAKE"
        assert status["salience"]["imu"]["total"] <= 0.1
        watch.drain(0.2)
        assert watch.seen == []

        focus = watch.until("FOCUS", salient)
        assert focus["from"] == "WAKE" and "salience_above" in focus["reason"]

        try:
            rest = watch.until("REST", salient, timeout_s=30)
        except AssertionError as exc:
            st = daemon.status()
            raise AssertionError(f"{exc}; atp {st['atp']}; burner {st['plugins']['burner']}") from None
        assert rest["from"] == "FOCUS" and "atp_below" in rest["reason"] and rest["atp"] < 0.05

        # A critical event: CRISIS in the very tick that took it (the Echo plugin saw the event
        # in a result of the same tick number).
        # REST pays the reservoir back; then a critical event.
        wait_for(lambda: daemon.status()["atp"]["fraction"] > 0.2, timeout_s=20)
        pub.event("alarm", "collision", priority="critical")
        crisis = watch.until("CRISIS", lambda: None, timeout_s=5)
        assert "critical_event" in crisis["reason"]
        watch.drain(1.0)
        took = [r.header["tick"] for r in watch.results if "alarm" in r.header["inputs"]]
        assert took == [crisis["tick"]], (took, crisis)

        # Silence: memory holds items from the salient stream; idle long enough -> DREAM.
        dream = watch.until("DREAM", lambda: None, timeout_s=30)
        assert "idle_above" in dream["reason"] and "memory_above" in dream["reason"]
        wait_for(lambda: daemon.status()["consolidation"]["runs"] > 0, timeout_s=10)

        # New input ends the dream.
        assert daemon.status()["plugins"]["memory"]["runs"] > 0
        wake = watch.until("WAKE", salient, timeout_s=20)
        assert wake["from"] == "DREAM"
        names = [(s["from"], s["to"]) for s in watch.seen]
        assert all(s["reason"] for s in watch.seen), names
        assert daemon.status()["health"] == "ok"
    finally:
        pub.close()
        sub.close()
        daemon.stop()
