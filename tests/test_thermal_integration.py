"""End to end: a real daemon reads an Orin-shaped sysfs fixture; when a zone reaches the throttle
temperature, the ATP recharge drops and the state machine reaches REST, as `sagectl status`
shows. Skipped until config.py has a `telemetry` section (TelemetryParams) that the daemon polls."""

from __future__ import annotations

import json
import subprocess

import pytest

from sage_runtime.config import SageConfig
from tests.harness import SAGECTL, DaemonProcess, wait_for
from tests.jetson_fixture import make_orin_tree

pytestmark = pytest.mark.skipif("telemetry" not in SageConfig.model_fields,
                                reason="config.py has no telemetry section yet, so the daemon polls no telemetry")


def sagectl(daemon: DaemonProcess, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([SAGECTL, "--socket", daemon.control_endpoint, "status", *args], capture_output=True,
                          text=True, timeout=30)


@pytest.mark.slow
def test_throttle_temperature_derates_recharge_and_reaches_rest(tmp_path):
    board = make_orin_tree(tmp_path / "board")
    daemon = DaemonProcess(tmp_path, config={"telemetry": {
        "provider": "sysfs", "sysfs_root": board.sys, "procfs_root": board.proc, "poll_interval_s": 0.1,
        "hot_temp_c": 80.0, "throttle_temp_c": 95.0}})
    daemon.start()
    try:
        cool = wait_for(lambda: (s := daemon.status())["telemetry"].get("reads", 0) > 0 and s, timeout_s=20)
        assert cool["telemetry"]["provider"] == "sysfs"
        assert cool["state"]["name"] != "REST"
        board.set_temp("tj-thermal", 97.0)
        hot = wait_for(lambda: (s := daemon.status())["state"]["name"] == "REST" and s, timeout_s=30)
        assert hot["atp"]["recharge_per_s"] < cool["atp"]["recharge_per_s"]

        text = sagectl(daemon)
        assert "REST" in text.stdout and "THROTTLED" in text.stdout, text.stdout + text.stderr
        status = json.loads(sagectl(daemon, "--json").stdout)
        assert status["telemetry"]["sample"]["throttled"] is True
        assert "tj-thermal" in " ".join(status["telemetry"]["sample"]["throttle_reasons"])
        assert {"device", "sdpa_backends", "shm", "jtop"} <= set(status["capabilities"])
    finally:
        daemon.stop()
