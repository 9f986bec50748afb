"""`sagectl state` and `sagectl trust` against the real daemon; trust survives a restart."""

from __future__ import annotations

import json
import subprocess

import numpy as np
import pytest

from sage_runtime.client import SensorPublisher
from tests.harness import SAGECTL, DaemonProcess, wait_for


def sagectl(daemon: DaemonProcess, *args: str) -> tuple[int, dict | str]:
    out = subprocess.run([SAGECTL, "--socket", daemon.control_endpoint, *args, "--json"], capture_output=True,
                         text=True, timeout=30)
    try:
        return out.returncode, json.loads(out.stdout)
    except json.JSONDecodeError:
        return out.returncode, out.stdout + out.stderr


def test_state_override_expires_and_clear(tmp_path):
    short_dwell = {s: {"min_dwell_s": 0.2} for s in ("WAKE", "FOCUS", "CRISIS", "REST", "DREAM")}
    daemon = DaemonProcess(tmp_path, {"tick": {"rate_hz": 50}, "metabolic": {"policies": short_dwell}}).start()
    try:
        code, shown = sagectl(daemon, "state", "show")
        assert code == 0 and shown["name"] == "WAKE" and shown["override_left_s"] is None

        code, held = sagectl(daemon, "state", "set", "focus", "--for", "1.5s")
        assert code == 0 and held["name"] == "FOCUS" and 0 < held["override_left_s"] <= 1.5
        assert "override" in held["reason"]
        # Nothing salient holds FOCUS once the override expires: the table takes it back to WAKE.
        back = wait_for(lambda: (s := daemon.status()["state"])["name"] == "WAKE" and s, timeout_s=15)
        assert back["override_left_s"] is None

        code, held = sagectl(daemon, "state", "set", "REST", "--for", "10m")
        assert code == 0 and held["name"] == "REST"
        code, cleared = sagectl(daemon, "state", "clear")
        assert code == 0 and cleared["override_left_s"] is None
        wait_for(lambda: daemon.status()["state"]["name"] == "WAKE", timeout_s=15)

        code, err = sagectl(daemon, "state", "set", "WAKE", "--for=-3s")
        assert code == 2 and "duration" in err
    finally:
        daemon.stop()


@pytest.mark.slow
def test_failing_plugin_loses_trust_is_paused_and_trust_survives_restart(tmp_path):
    config = {"tick": {"rate_hz": 50},
              "plugins": {"enabled": ["tests.plugins_for_tests:Echo", "tests.plugins_for_tests:Faulty"],
                          "options": {"faulty": {"mode": "raise", "after": 3}}, "breaker_failures": 1000},
              "cognition": {"trust_save_interval_s": 0.5}}
    daemon = DaemonProcess(tmp_path, config).start()
    pub = SensorPublisher(daemon.ingest)
    rng = np.random.default_rng(1)
    try:
        def trust():
            pub.tensor("imu", rng.standard_normal(8).astype(np.float32))
            return daemon.control().call("trust")

        paused = wait_for(lambda: "faulty" in (t := trust())["paused"] and t, timeout_s=30, interval_s=0.05)
        assert paused["plugins"]["faulty"]["trust"] < 0.2 <= paused["plugins"]["echo"]["trust"]
        assert paused["plugins"]["faulty"]["errors"] > 0 and paused["plugins"]["echo"]["errors"] == 0
        assert paused["sensors"]["imu"] > 0
        # Paused by trust: the tick stops giving it ATP and takes back its credit, so once a job
        # that was already running has ended, its run count and ATP granted stop growing.
        idle = wait_for(lambda: (p := daemon.status()["plugins"]["faulty"]) and not p["job_running"]
                        and p["credit"] == 0 and p, timeout_s=10, interval_s=0.02)
        for _ in range(20):
            trust()
        after = daemon.status()["plugins"]["faulty"]
        assert (after["runs"], after["atp_granted"]) == (idle["runs"], idle["atp_granted"]), (idle, after)
        code, before = sagectl(daemon, "trust")
        assert code == 0 and before["plugins"]["faulty"]["paused"]
    finally:
        pub.close()
        code, _ = daemon.stop()
    assert code == 0
    saved = json.loads((daemon.state_dir / "trust.json").read_text())
    assert saved  # written atomically by statefile at shutdown

    again = DaemonProcess(tmp_path, config).start()
    try:
        code, restored = sagectl(again, "trust")
        assert restored["restore"] == "restored"
        assert restored["plugins"]["faulty"]["trust"] < 0.2 and restored["plugins"]["faulty"]["paused"]
        assert restored["plugins"]["echo"]["trust"] == pytest.approx(before["plugins"]["echo"]["trust"], abs=0.02)
    finally:
        again.stop()
